"""MixPrompt's model: sub-prompt features, responsibilities, losses, tau schedule, diagnostics.

Pure torch, no trainer or dataset: everything here is testable on random tensors. Notation: C classes, K
sub-prompts, D feature dim, B images; f image features and t[c, k] sub-prompt text features, both
L2-normalised; a = similarity scale; tau = EM temperature.

Feature-space parametrisation: t[c, k] = normalize(b[c] + delta[c, k]) (``feature_subprompts``), b[c] the
frozen class text feature; the offsets start random, at template features, or at the k-means modes of
the class's training images (``random_offsets``, ``clustered_offsets``, ``kmeans_offsets``).

Objective per batch (``MixPromptObjective``, which the trainer only feeds):
- E-step: responsibilities gamma[i, k] = softmax_k(a * cos(f_i, t[y_i, k]) / tau), detached targets (or
  balanced targets from an epoch-level Sinkhorn E-step, see ``sinkhorn_balance``);
- M-step mixture loss: MIXTURE_LOSS ce, cross-entropy of the (class, sub-prompt) pair over all C*K pairs
  weighted by gamma, so a sub-prompt is pulled toward the images it is responsible for and pushed away from
  the rest; pull, the earlier system's pull-only -sum_k gamma s on the own class; or ce_pull (the default),
  the two mixed, PULL_SHARE of pull;
- class loss: cross-entropy of the pooled class scores;  L = LAMBDA * mix + (1 - LAMBDA) * class;
- zero-shot residual: the trainer adds w * a * cos(f_i, b[c]) (ZEROSHOT_WEIGHT, b[c] the frozen class text
  feature) to every sub-prompt score of class c before this objective and at inference; it is constant over a class's
  sub-prompts, so responsibilities and the pull are unchanged and the class loss and the pair cross-entropy
  see it;
- regularisers, each carrying gradient to what it must move: L2 on raw offsets; diversity on the final
  features t[c, :] (not on the raw offsets, which can look diverse while t collapses); usage balance on
  the class-level marginal usage of sub-prompts, computed from *non-detached* soft responsibilities and
  smoothed by a running estimate (a batch holds ~0-1 images of a class). Per-image entropy (ENTROPY) is
  off by default and exists to test the earlier system's fixes (docs/seed_analysis.md): pushing every
  image toward uniform responsibilities does not separate sub-prompts; its ``image_detached`` form is,
  on purpose, the one term without gradient (the earlier system's later form).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TAU_SCHEDULES = ("cosine", "linear", "exponential")
POOLS = ("max", "lse", "mean")
DIVERSITY_TYPES = ("none", "cosine", "orthogonal")
BALANCE_TYPES = ("none", "marginal_entropy", "sinkhorn")
MIXTURE_LOSSES = ("ce", "pull", "ce_pull")
OFFSET_REG_REDUCTIONS = ("sum_d", "mean")
ENTROPY_TYPES = ("none", "image_detached", "image")


def tau_at(progress, tau_start, tau_end, schedule="cosine"):
    """EM temperature after ``progress`` in [0, 1] of training (by iteration)."""
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "cosine":
        return tau_end + (tau_start - tau_end) * (1 + math.cos(math.pi * p)) / 2
    if schedule == "linear":
        return tau_start + (tau_end - tau_start) * p
    if schedule == "exponential":
        return tau_start * (tau_end / tau_start) ** p
    raise ValueError(f"unknown tau schedule {schedule!r}; expected one of {TAU_SCHEDULES}")


def subprompt_scores(image_features, subprompt_features, scale):
    """(B, C, K) = scale * cos(f_i, t[c, k]); both inputs L2-normalised, (B, D) and (C, K, D)."""
    return scale * torch.einsum("bd,ckd->bck", image_features, subprompt_features.to(image_features.dtype))


def pool_scores(scores, pool):
    """Class scores (B, C) from sub-prompt scores (B, C, K). ``lse`` is log-mean-exp, so K identical
    sub-prompts give the same score as one."""
    if pool == "max":
        return scores.max(dim=-1).values
    if pool == "lse":
        return torch.logsumexp(scores, dim=-1) - math.log(scores.shape[-1])
    if pool == "mean":
        return scores.mean(dim=-1)
    raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")


def own_class_scores(scores, labels):
    """(B, K): the scores of each image's own class sub-prompts."""
    return scores[torch.arange(scores.shape[0], device=scores.device), labels]


def responsibilities(own_scores, tau):
    """gamma (B, K) = softmax_k(own_scores / tau); rows sum to one. Differentiable: detach for targets."""
    return F.softmax(own_scores / tau, dim=-1)


def mixture_loss(scores, labels, gamma):
    """-sum_k gamma[i, k] log p(y_i, k | f_i), p a softmax over all C*K (class, sub-prompt) pairs."""
    batch, n_cls, n_sub = scores.shape
    log_p = F.log_softmax(scores.reshape(batch, n_cls * n_sub), dim=-1).reshape(batch, n_cls, n_sub)
    return -(gamma * own_class_scores(log_p, labels)).sum(dim=-1).mean()


def pull_loss(scores, labels, gamma):
    """-sum_k gamma[i, k] s[i, y_i, k], averaged over images: pulls each image's own-class sub-prompts toward
    it in proportion to gamma, pushes nothing away (the earlier system's mixture loss, on raw scores)."""
    return -(gamma * own_class_scores(scores, labels)).sum(dim=-1).mean()


def ce_pull_loss(scores, labels, gamma, pull_share):
    """(1 - pull_share) * ``mixture_loss`` + pull_share * ``pull_loss``: the cross-entropy's push away from the
    other pairs keeps sub-prompts apart, the pull moves each toward the images the E-step gives it."""
    return (1 - pull_share) * mixture_loss(scores, labels, gamma) + pull_share * pull_loss(scores, labels, gamma)


def class_loss(scores, labels, pool, temperature=1.0):
    """Cross-entropy of the pooled class scores divided by ``temperature``."""
    return F.cross_entropy(pool_scores(scores, pool) / temperature, labels)


def offset_l2(offsets, reduction):
    """``sum_d``: mean over sub-prompts of |delta|^2 (summed over the feature dim); ``mean``: mean of
    delta^2 over every number (D times weaker for offsets of dimension D)."""
    if reduction == "sum_d":
        return offsets.pow(2).sum(-1).mean()
    if reduction == "mean":
        return offsets.pow(2).mean()
    raise ValueError(f"unknown offset L2 reduction {reduction!r}; expected one of {OFFSET_REG_REDUCTIONS}")


def image_entropy_loss(own_scores, gamma, tau, kind):
    """-mean_i H(responsibilities of image i). ``image_detached``: H of the detached E-step targets ``gamma``,
    a constant (zero gradient; the form the earlier system added after its collapse); ``image``: H of
    softmax(own_scores / tau) with gradient, which pushes each image toward uniform responsibilities."""
    if kind == "image_detached":
        return -entropy(gamma.detach()).mean()
    if kind == "image":
        return -entropy(responsibilities(own_scores, tau)).mean()
    raise ValueError(f"unknown entropy type {kind!r}; expected one of {ENTROPY_TYPES}")


def pairwise_cosine(vectors):
    """Mean off-diagonal cosine per row of (..., K, D) -> (...,); NaN-free for K = 1 (returns 1)."""
    n_sub = vectors.shape[-2]
    if n_sub < 2:
        return torch.ones(vectors.shape[:-2], device=vectors.device)
    unit = F.normalize(vectors.float(), dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (..., K, K)
    off_diag = gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off_diag / (n_sub * (n_sub - 1))


def diversity_loss(subprompt_features, kind):
    """Penalty on the similarity of the final features t (C, K, D) of each class's sub-prompts.

    ``cosine``: mean pairwise cosine (pushes sub-prompts apart); ``orthogonal``: mean squared off-diagonal
    cosine (pushes toward orthogonal, no reward beyond it). Zero for ``none`` or K = 1.
    """
    if kind == "none" or subprompt_features.shape[-2] < 2:
        return subprompt_features.new_zeros(())
    unit = F.normalize(subprompt_features.float(), dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (C, K, K)
    n_sub = gram.shape[-1]
    mask = ~torch.eye(n_sub, dtype=torch.bool, device=gram.device)
    off = gram[:, mask]  # (C, K*(K-1))
    if kind == "cosine":
        return off.mean()
    if kind == "orthogonal":
        return off.pow(2).mean()
    raise ValueError(f"unknown diversity type {kind!r}; expected one of {DIVERSITY_TYPES}")


def entropy(probs, dim=-1):
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=dim)


def usage_balance_loss(soft_gamma, labels, running_usage, momentum):
    """1 - H(u_c) / log K averaged over the classes in the batch, where u_c is the class's marginal
    sub-prompt usage: ``momentum * running_usage[c] + (1 - momentum) * mean of soft_gamma over the
    batch's images of class c``. ``soft_gamma`` (B, K) must carry gradient; ``running_usage`` (C, K) is a
    detached estimate. Returns (loss, batch_usage (C_b, K) detached, classes (C_b,))."""
    n_sub = soft_gamma.shape[-1]
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = soft_gamma.new_zeros(len(classes), n_sub).index_add(0, inverse, soft_gamma)
    counts = torch.bincount(inverse, minlength=len(classes)).to(soft_gamma.dtype).unsqueeze(1)
    batch_usage = sums / counts  # (C_b, K)
    usage = momentum * running_usage[classes].to(batch_usage.dtype) + (1 - momentum) * batch_usage
    if n_sub < 2:
        return soft_gamma.new_zeros(()), batch_usage.detach(), classes
    loss = 1 - (entropy(usage) / math.log(n_sub)).mean()
    return loss, batch_usage.detach(), classes


DOUBLE_EXP_SAFE_RANGE = 700.0  # exp(-x) stays a normal float64 for x below ~708


@torch.no_grad()
def sinkhorn_balance(own_scores, tau, n_iters=50, marginal_power=1.0, shares=None):
    """Balanced responsibilities (N, K) for N images of one class: rows sum to one and every sub-prompt
    receives N / K images' worth of mass (Sinkhorn-Knopp on exp(scores / tau)). ``marginal_power`` p < 1
    relaxes the column constraint: rows stay exact, and each column's scale is (N / K / usage) ** p, the usage
    taken before that scale; iterated to its fixed point, this is the semi-relaxed Sinkhorn of a KL penalty of
    weight rho = tau p / (1 - p) on the usage (so a given p relaxes less as tau anneals), converging at a rate
    of about p per iteration (p near 1 needs more than the default iterations). p = 0 leaves the plain softmax
    responsibilities. ``shares`` (K,), any positive scale: sub-prompt k's mass is N x shares[k] / sum(shares)
    instead of N / K."""
    n_img, n_sub = own_scores.shape
    target = (n_img / n_sub if shares is None else  # (K,) images' worth of mass per sub-prompt
              n_img * shares.double().to(own_scores.device) / shares.double().sum())
    log_q = own_scores.double() / tau
    # one shift for all images (the iterates of earlier versions), per image where exp would underflow an
    # image's whole row to zeros (no target): its best score more than ~745 (in units of tau) below another's
    row_max = log_q.max(dim=1, keepdim=True).values  # (N, 1)
    underflow = bool((row_max.max() - row_max.min()) > DOUBLE_EXP_SAFE_RANGE)
    log_q = log_q - (row_max if underflow else row_max.max())
    q = log_q.exp()
    if marginal_power == 1.0:
        for _ in range(n_iters):
            q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-300) * target
            q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-300)
        return q.to(own_scores.dtype)
    column_scale = torch.ones(n_sub, dtype=q.dtype, device=q.device)  # (K,)
    for _ in range(n_iters):
        row_scale = 1.0 / (q @ column_scale).clamp_min(1e-300)  # (N,): every image's row sums to one
        mass = (q * row_scale[:, None]).sum(dim=0).clamp_min(1e-300)  # (K,) usage before the column scale
        column_scale = (target / mass) ** marginal_power
    q = q * column_scale
    return (q / q.sum(dim=1, keepdim=True).clamp_min(1e-300)).to(own_scores.dtype)


def sample_classes(labels, n_cls, n_sample, generator=None):
    """Classes scored in one training step when the label space is large (sampled softmax).

    Every class of the batch is kept (inclusion probability 1) and ``n_sample - #batch classes`` others are
    drawn uniformly without replacement from the remaining ``n_cls - #batch classes``, each included with
    probability q = drawn / remaining. Returns ``(classes (S,), labels in classes (B,), correction (S,))``
    where ``correction`` = -log q (0 for the batch's classes) is added to a sampled class's scores: the
    importance-weighted partition function sum_j exp(s_j) / q_j over the sample is then an unbiased
    estimate of the full one (Bengio & Senecal 2008; Jean et al. 2015). The loss is its log, so it is
    consistent but slightly optimistic in expectation (Jensen); with ``n_sample >= n_cls`` (or 0) all
    classes are kept in order with zero correction and the loss is exactly the full one.
    """
    all_classes = torch.arange(n_cls, device=labels.device)
    if n_sample <= 0 or n_sample >= n_cls:
        return all_classes, labels, torch.zeros(n_cls, device=labels.device)
    positives = torch.unique(labels)  # sorted (P,)
    is_positive = torch.zeros(n_cls, dtype=torch.bool, device=labels.device)
    is_positive[positives] = True
    others = all_classes[~is_positive]  # (C - P,)
    n_drawn = min(max(n_sample - len(positives), 0), len(others))
    drawn = others[torch.randperm(len(others), generator=generator)[:n_drawn].to(labels.device)]
    classes = torch.cat([positives, drawn])  # (S,)
    correction = torch.zeros(len(classes), device=labels.device)
    if n_drawn:
        correction[len(positives):] = math.log(len(others) / n_drawn)
    remap = torch.full((n_cls,), -1, dtype=torch.long, device=labels.device)
    remap[positives] = torch.arange(len(positives), device=labels.device)
    return classes, remap[labels], correction


def usage_from_gamma(gamma, labels, n_cls):
    """Per-class hard usage (share of images whose arg-max sub-prompt is k) and soft usage (mean gamma),
    both (C, K), plus image counts (C,). Classes without images get zero rows."""
    n_sub = gamma.shape[-1]
    counts = torch.bincount(labels, minlength=n_cls).to(gamma.dtype)  # (C,)
    hard = torch.zeros(n_cls, n_sub, dtype=gamma.dtype, device=gamma.device)
    hard.index_put_((labels, gamma.argmax(dim=-1)), torch.ones_like(labels, dtype=gamma.dtype), accumulate=True)
    soft = torch.zeros(n_cls, n_sub, dtype=gamma.dtype, device=gamma.device).index_add(0, labels, gamma)
    denom = counts.clamp_min(1).unsqueeze(1)
    return hard / denom, soft / denom, counts


# ------------------------------------------------------------------------------------------ the objective
@dataclass(frozen=True)
class MixPromptObjective:
    """The training loss of one batch and its named terms (``TRAINER.MIXPROMPT`` keys in brackets):

    L = lambda * mixture + (1 - lambda) * class          [LAMBDA_MIXTURE]
        + w_reg * l2(delta)                                [OFFSET_REG_WEIGHT, OFFSET_REG_REDUCTION]
        + w_div * diversity(t)                             [DIVERSITY, DIVERSITY_WEIGHT]
        + w_bal * usage_balance(soft gamma, running usage) [BALANCE marginal_entropy, BALANCE_WEIGHT, _MOMENTUM]
        + w_ent * (-mean_i H(responsibilities of image i)) [ENTROPY, ENTROPY_WEIGHT]

    mixture [MIXTURE_LOSS]: ``ce``, gamma-weighted cross-entropy over all C*K (class, sub-prompt) pairs
    (``mixture_loss``); ``pull``, -sum_k gamma s on the own class only (``pull_loss``); ``ce_pull``, the two
    mixed with a share ``pull_share`` of pull [PULL_SHARE] (``ce_pull_loss``). class: cross-entropy
    of pool(s) / CLASS_TEMPERATURE [POOL, CLASS_TEMPERATURE]. l2: ``offset_l2`` (sum_d | mean).
    """
    lambda_mixture: float = 0.5
    pool: str = "lse"
    offset_reg_weight: float = 0.0
    diversity: str = "none"
    diversity_weight: float = 0.0
    balance: str = "none"
    balance_weight: float = 0.0
    balance_momentum: float = 0.9
    mixture: str = "ce_pull"
    class_temperature: float = 1.0
    offset_reg_reduction: str = "sum_d"
    entropy: str = "none"
    entropy_weight: float = 0.0
    pull_share: float = 0.5

    @classmethod
    def from_cfg(cls, m):
        """From a ``TRAINER.MIXPROMPT`` config node."""
        return cls(m.LAMBDA_MIXTURE, m.POOL, m.OFFSET_REG_WEIGHT, m.DIVERSITY, m.DIVERSITY_WEIGHT, m.BALANCE,
                   m.BALANCE_WEIGHT, m.BALANCE_MOMENTUM, m.MIXTURE_LOSS, m.CLASS_TEMPERATURE,
                   m.OFFSET_REG_REDUCTION, m.ENTROPY, m.ENTROPY_WEIGHT, m.PULL_SHARE)

    def __call__(self, scores, target, gamma, subprompt_features, offsets, tau=None, running_usage=None, labels=None):
        """(loss, terms) for sub-prompt scores (B, S, K) of the scored classes, each image's position
        ``target`` (B,) among them, E-step targets ``gamma`` (B, K), the scored classes' features (S, K, D)
        and the raw offsets (C, K, P) or (K, P). Balance marginal_entropy also needs ``tau``, the running
        class usage (C, K) and the images' classes ``labels`` (B,) (= ``target`` when every class is scored);
        then ``terms["batch_usage"]`` and ``terms["classes"]`` hold what the running estimate is updated
        with (``update_running_usage``)."""
        if self.mixture == "ce_pull":
            loss_mix = ce_pull_loss(scores, target, gamma, self.pull_share)
        else:
            loss_mix = (pull_loss if self.mixture == "pull" else mixture_loss)(scores, target, gamma)
        loss_cls = class_loss(scores, target, self.pool, self.class_temperature)
        loss = self.lambda_mixture * loss_mix + (1 - self.lambda_mixture) * loss_cls
        terms = {"loss_mix": loss_mix.item(), "loss_cls": loss_cls.item()}
        if self.offset_reg_weight > 0:
            loss = loss + self.offset_reg_weight * offset_l2(offsets, self.offset_reg_reduction)
        if self.entropy != "none" and self.entropy_weight > 0:
            loss_ent = image_entropy_loss(own_class_scores(scores, target), gamma, tau, self.entropy)
            loss = loss + self.entropy_weight * loss_ent
            terms["loss_ent"] = loss_ent.item()
        if self.diversity != "none" and self.diversity_weight > 0:
            loss_div = diversity_loss(subprompt_features, self.diversity)
            loss = loss + self.diversity_weight * loss_div
            terms["loss_div"] = loss_div.item()
        if self.balance == "marginal_entropy":
            soft_gamma = responsibilities(own_class_scores(scores, target), tau)  # (B, K), with gradient
            loss_bal, batch_usage, classes = usage_balance_loss(
                soft_gamma, target if labels is None else labels, running_usage, self.balance_momentum)
            loss = loss + self.balance_weight * loss_bal
            terms.update(loss_bal=loss_bal.item(), batch_usage=batch_usage, classes=classes,
                         soft_gamma=soft_gamma.detach())
        return loss, terms


@torch.no_grad()
def update_running_usage(running_usage, classes, batch_usage, momentum):
    """running[c] <- momentum * running[c] + (1 - momentum) * batch usage[c], for the batch's classes."""
    running_usage[classes] = momentum * running_usage[classes] + (1 - momentum) * batch_usage


# ------------------------------------------------------------------------------------------ parametrisation
def feature_subprompts(base_features, offsets):
    """t = normalize(b + delta): base (S, D) and offsets (S, K, D), or shared offsets (K, D) -> (S, K, D)."""
    if offsets.dim() == 2:
        offsets = offsets.unsqueeze(0)  # (1, K, D)
    return F.normalize(base_features.unsqueeze(1) + offsets, dim=-1)


def random_offsets(shape, scale, generator=None):
    """Gaussian offsets whose expected norm (over the last dim) is ``scale``."""
    return torch.randn(shape, generator=generator) * (scale / shape[-1] ** 0.5)


def offsets_to_features(target_features, base_features):
    """Offsets (C, K, D) that put every sub-prompt exactly at the direction of ``target_features`` (C, K, D):
    normalize(b[c] + delta[c, k]) = normalize(target[c, k]) for delta = normalize(target) - b."""
    return F.normalize(target_features.float(), dim=-1) - base_features.float().unsqueeze(1)


def random_coordinate_offsets(shape, std, generator=None):
    """Gaussian offsets with standard deviation ``std`` per coordinate (norm ~ std * sqrt(D): 0.23 for
    std 0.01 at D = 512), the earlier system's ``randn * 0.01``."""
    return torch.randn(shape, generator=generator) * std


def kmeans(points, n_clusters, n_iters=25, generator=None, restarts=1):
    """k-means with k-means++ seeding: centroids (n_clusters, D) of ``points`` (N >= n_clusters, D), the
    lowest-inertia (sum of squared distances to the nearest centroid) of ``restarts`` runs, each drawing its
    seeds from ``generator`` in turn."""
    best_inertia, best = None, None
    for _ in range(restarts):
        centroids = _kmeans_run(points, n_clusters, n_iters, generator)
        inertia = torch.cdist(points, centroids).min(dim=1).values.pow(2).sum().item()
        if best is None or inertia < best_inertia:
            best_inertia, best = inertia, centroids
    return best


def _kmeans_run(points, n_clusters, n_iters, generator):
    """One k-means++ seeding and up to ``n_iters`` Lloyd iterations (stops once the assignment repeats:
    the centroids are then a fixed point, so stopping gives the same result as iterating on)."""
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = [points[first]]
    for _ in range(1, n_clusters):
        dist = torch.cdist(points, torch.cat(centroids)).min(dim=1).values.pow(2)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / len(dist))
        centroids.append(points[torch.multinomial(probs, 1, generator=generator)])
    centroids = torch.cat(centroids)  # (n_clusters, D)
    previous = None
    for _ in range(n_iters):
        assign = torch.cdist(points, centroids).argmin(dim=1)  # (N,)
        if previous is not None and torch.equal(assign, previous):
            break
        previous = assign
        for k in range(n_clusters):
            members = points[assign == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids


def ward_clusters(points, n_clusters):
    """(N,) cluster of each of ``points`` (N, D) after agglomerative clustering with Ward's criterion: starting
    from one cluster per point, repeatedly merge the two clusters whose merge adds the least within-cluster
    squared distance, |A| |B| / (|A| + |B|) x |mean A - mean B|^2 (the first such pair, by smallest member, on
    ties), until ``n_clusters`` remain (at most N). Clusters are numbered by their smallest point.
    Deterministic; the Lance-Williams update keeps it at O(N^2) per merge after one O(N^2 D) distance matrix."""
    n_points = len(points)
    # cost[a, b] = 2 x the merge cost of clusters a and b (each kept at its smallest point's index)
    cost = torch.cdist(points.double(), points.double()).pow(2)  # (N, N)
    cost.fill_diagonal_(float("inf"))
    sizes = torch.ones(n_points, dtype=torch.float64)
    owner = torch.arange(n_points)  # the cluster (smallest point) each point belongs to
    for _ in range(n_points - max(n_clusters, 1)):
        a, b = divmod(int(cost.argmin()), n_points)
        a, b = min(a, b), max(a, b)
        n_a, n_b = sizes[a], sizes[b]
        merged = ((n_a + sizes) * cost[a] + (n_b + sizes) * cost[b] - sizes * cost[a, b]) / (n_a + n_b + sizes)
        cost[a], cost[:, a] = merged, merged
        cost[a, a] = float("inf")
        cost[b], cost[:, b] = float("inf"), float("inf")
        sizes[a] += n_b
        owner[owner == b] = a
    return torch.unique(owner, return_inverse=True)[1]


def cluster_means(points, assign, n_clusters):
    """(k, D): the mean of each cluster 0 .. k - 1 of ``points`` (N, D) under ``assign`` (N,)."""
    return torch.stack([points[assign == j].mean(dim=0) for j in range(n_clusters)])


def ward_means(points, n_clusters):
    """(k, D): the means of the ``ward_clusters`` of ``points`` (N, D), k = min(n_clusters, N)."""
    assign = ward_clusters(points, n_clusters)  # (N,)
    return cluster_means(points, assign, int(assign.max()) + 1)


def clustered_offsets(features, labels, base_features, n_sub, scale, clustering="kmeans", at_means=False,
                      generator=None, restarts=1):
    """Per class, a start at the K clusters of its image ``features`` (N, D) (``clustering`` kmeans: the best of
    ``restarts`` seeded k-means++ runs, each image in its nearest centroid's cluster; ward: ``ward_clusters``),
    computed on the class's residuals (features minus the class mean), classes in order, one ``generator``.
    Returns (offsets (C, K, D), sizes (C, K): images per cluster). ``at_means`` False: each offset has norm
    ``scale`` along a cluster's mean residual (sub-prompts tilted from b[c] toward its images' clusters);
    True: each sub-prompt exactly at a cluster's mean feature (``offsets_to_features`` from ``base_features``
    b (C, D)). Sub-prompts beyond a class's image count keep the ``random_offsets`` drawn first and size 1."""
    n_cls, dim = base_features.shape
    offsets = random_offsets((n_cls, n_sub, dim), scale, generator)  # (C, K, D)
    sizes = torch.ones(n_cls, n_sub)  # (C, K)
    for c in range(n_cls):
        points = features[labels == c]
        k = min(n_sub, len(points))
        if k < (1 if at_means else 2):  # one image has no residual direction
            continue
        residuals = points - points.mean(0)
        if clustering == "ward":
            assign = ward_clusters(residuals, k)  # (N_c,)
            centres = cluster_means(residuals, assign, k)  # (k, D)
        else:
            centres = kmeans(residuals, k, generator=generator, restarts=restarts)  # (k, D)
            assign = torch.cdist(residuals, centres).argmin(dim=1)
        sizes[c, :k] = torch.bincount(assign, minlength=k).float()
        if at_means:
            offsets[c, :k] = offsets_to_features((centres + points.mean(0))[None], base_features[c:c + 1].cpu())[0]
        else:
            offsets[c, :k] = F.normalize(centres, dim=-1) * scale
    return offsets, sizes


def kmeans_offsets(features, labels, n_sub, scale, generator=None, restarts=1):
    """SCOPE shared: K offsets (K, D) of norm ``scale`` along the k-means centroids (best of ``restarts``) of every
    class's residuals (its image features minus the class mean); random directions beyond the image count."""
    residuals = torch.zeros_like(features)
    for c in labels.unique():
        mask = labels == c
        residuals[mask] = features[mask] - features[mask].mean(0)
    offsets = random_offsets((n_sub, features.shape[1]), scale, generator)
    k = min(n_sub, len(residuals))
    offsets[:k] = F.normalize(kmeans(residuals, k, generator=generator, restarts=restarts), dim=-1) * scale
    return offsets
