"""Collapse diagnostics for MixPrompt: per class, then averaged, plus distributions; and mode recovery.

- ``offset_cos``: mean pairwise cosine of the raw offsets delta[c, :] (flattened per sub-prompt);
- ``feature_cos``: mean pairwise cosine of the final sub-prompt features t[c, :];
- ``usage_hard``: share of the class's training images whose arg-max responsibility is k; ``usage_soft``:
  mean responsibility; ``eff_k`` = exp(entropy(usage_hard)), the effective number of sub-prompts in use;
  ``top1_share`` = max usage_hard; ``dead`` = sub-prompts that win no image;
- ``collapsed`` (per class): ``feature_cos >= collapse_feature_cos`` (the sub-prompts are one text
  feature: the original analysis saw 0.94-0.96) **or** ``top1_share >= collapse_top1_share`` (one
  sub-prompt takes the class's images: the original saw ~99%). The run is flagged collapsed when at least
  half of the classes are. Why 0.98 and not 0.95: classes of working runs (the fixed defaults) with
  feature_cos 0.95-0.97 still split their images (eff_k ~3 of 4), so 0.95 alone would flag working
  sub-prompts; the collapse of the original settings shows in the usage (top1_share ~0.99).
- why (with the features the sub-prompts started from): ``initial_feature_cos``, the mean pairwise cosine
  of the initial features t0[c, :]; per sub-prompt ``moved`` = 1 - cos(t[c, k], t0[c, k]) and ``wins``,
  the number of the class's training images whose arg-max sub-prompt it is; ``moved_winners`` /
  ``moved_losers``: mean ``moved`` of sub-prompts that win at least one image / none;
- mode recovery (data with known modes): per class, the normalised mutual information and the purity
  between each image's arg-max sub-prompt and its true mode.
"""
import math
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

from .mixprompt_model import entropy, pairwise_cosine, usage_from_gamma

DEFAULT_COLLAPSE_FEATURE_COS = 0.98
DEFAULT_COLLAPSE_TOP1_SHARE = 0.9


def _quantiles(values):
    t = torch.as_tensor(values, dtype=torch.float64)
    qs = torch.quantile(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
    return dict(zip(("min", "q25", "median", "q75", "max"), qs))


@torch.no_grad()
def collapse_diagnostics(offsets, subprompt_features, gamma, labels,
                         collapse_feature_cos=DEFAULT_COLLAPSE_FEATURE_COS,
                         collapse_top1_share=DEFAULT_COLLAPSE_TOP1_SHARE, initial_features=None):
    """Diagnostics dict from flattened offsets, (C, K, P) per class or (K, P) shared, features (C, K, D), responsibilities
    gamma (N, K) of N training images with labels (N,). Means are over classes that have images. With
    ``initial_features`` (C, K, D), the features at initialisation, also the movement statistics."""
    n_cls, n_sub = subprompt_features.shape[:2]
    if offsets.dim() == 2:  # shared scope: (K, P), the same for every class
        offset_cos = pairwise_cosine(offsets.float().unsqueeze(0)).expand(n_cls)
    else:  # class scope: (C, K, P)
        offset_cos = pairwise_cosine(offsets.float())
    feature_cos = pairwise_cosine(subprompt_features.float())  # (C,)
    hard, soft, counts = usage_from_gamma(gamma.float(), labels, n_cls)
    present = counts > 0
    eff_k, top1, dead = usage_statistics(hard)  # (C,) each
    collapsed = collapse_rule(feature_cos, top1, collapse_feature_cos, collapse_top1_share)
    idx = present.nonzero().flatten()

    def mean(t):
        return float(t[idx].float().mean()) if len(idx) else float("nan")

    per_class = {
        "offset_cos": offset_cos[idx].tolist(),
        "feature_cos": feature_cos[idx].tolist(),
        "eff_k": eff_k[idx].tolist(),
        "top1_share": top1[idx].tolist(),
        "dead": dead[idx].tolist(),
        "collapsed": collapsed[idx].tolist(),
        "usage_hard": hard[idx].tolist(),
        "usage_soft": soft[idx].tolist(),
        "labels": idx.tolist(),
    }
    collapsed_frac = mean(collapsed)
    movement = {}
    if initial_features is not None:
        movement, moved_per_class = movement_statistics(subprompt_features, initial_features,
                                                        hard * counts.unsqueeze(1), idx)
        per_class.update(moved_per_class)
    return {
        "K": n_sub,
        "num_classes": len(idx),
        "offset_cos": mean(offset_cos),
        "feature_cos": mean(feature_cos),
        "eff_k": mean(eff_k),
        "top1_share": mean(top1),
        "dead": mean(dead),
        "collapsed_frac": collapsed_frac,
        "collapsed": bool(collapsed_frac >= 0.5) if not math.isnan(collapsed_frac) else False,
        "distributions": {k: _quantiles(per_class[k]) for k in ("feature_cos", "eff_k", "top1_share")}
        if len(idx) else {},
        **movement,
        "per_class": per_class,
        "rule": f"class collapsed if feature_cos >= {collapse_feature_cos} or top1_share >= {collapse_top1_share}; "
                "run collapsed if >= 50% of classes are",
    }


def movement_statistics(subprompt_features, initial_features, wins, classes):
    """How far each sub-prompt moved from its initial feature and whether it wins images, over ``classes``:
    (means, per class). Means: ``initial_feature_cos``, ``moved``, ``moved_winners``, ``moved_losers`` (NaN
    when there is none); per class lists: ``moved`` (1 - cos(t, t0), (C_p, K)), ``wins`` (image counts)."""
    feats, init = subprompt_features.float()[classes], initial_features.float()[classes]  # (C_p, K, D)
    moved = 1 - F.cosine_similarity(feats, init, dim=-1)  # (C_p, K)
    won = wins[classes] > 0

    def mean_of(mask):
        return float(moved[mask].mean()) if bool(mask.any()) else float("nan")

    means = {"initial_feature_cos": float(pairwise_cosine(init).mean()) if len(classes) else float("nan"),
             "moved": mean_of(torch.ones_like(won)), "moved_winners": mean_of(won), "moved_losers": mean_of(~won)}
    return means, {"moved": moved.tolist(), "wins": wins[classes].round().int().tolist()}


def usage_statistics(usage):
    """(eff_k, top1_share, dead) of hard usage shares (..., K): exp(entropy), the largest share, the number
    of sub-prompts that win no image."""
    return entropy(usage).exp(), usage.max(dim=-1).values, (usage == 0).sum(dim=-1)


def collapse_rule(feature_cos, top1_share, collapse_feature_cos=DEFAULT_COLLAPSE_FEATURE_COS,
                  collapse_top1_share=DEFAULT_COLLAPSE_TOP1_SHARE):
    """Whether a class has collapsed (tensors or floats): one text feature, or one sub-prompt takes its images."""
    return (feature_cos >= collapse_feature_cos) | (top1_share >= collapse_top1_share)


@torch.no_grad()
def class_statistics(subprompt_features, winners, collapse_feature_cos=DEFAULT_COLLAPSE_FEATURE_COS,
                     collapse_top1_share=DEFAULT_COLLAPSE_TOP1_SHARE):
    """One class's numbers from its sub-prompt features (K, D) and its images' arg-max sub-prompts (n,):
    usage (K,), eff_k, top1_share, dead, feature_cos, collapsed (the statistics of ``collapse_diagnostics``)."""
    n_sub = subprompt_features.shape[0]
    feature_cos = float(pairwise_cosine(subprompt_features.float()))
    if len(winners) == 0:
        return {"usage": [0.0] * n_sub, "eff_k": float("nan"), "top1_share": float("nan"), "dead": None,
                "feature_cos": feature_cos, "collapsed": False}
    usage = torch.bincount(winners, minlength=n_sub).double() / len(winners)  # (K,)
    eff_k, top1, dead = usage_statistics(usage)
    return {"usage": usage.tolist(), "eff_k": float(eff_k), "top1_share": float(top1), "dead": int(dead),
            "feature_cos": feature_cos,
            "collapsed": bool(collapse_rule(feature_cos, float(top1), collapse_feature_cos, collapse_top1_share))}


# ------------------------------------------------------------------------------------------ mode recovery
def entropy_of_counts(counts):
    """Entropy (nats) of the distribution given by non-negative counts."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def nmi(truth, pred):
    """Normalised mutual information (arithmetic normalisation, as scikit-learn's default)."""
    h_t, h_p = entropy_of_counts(Counter(truth).values()), entropy_of_counts(Counter(pred).values())
    if h_t == 0 and h_p == 0:
        return 1.0
    joint = entropy_of_counts(Counter(zip(truth, pred)).values())
    mutual = h_t + h_p - joint
    return 0.0 if h_t + h_p == 0 else max(0.0, 2 * mutual / (h_t + h_p))


def purity(truth, pred):
    """Share of images whose sub-prompt's majority true mode is their own."""
    groups = defaultdict(list)
    for t, p in zip(truth, pred):
        groups[p].append(t)
    return sum(Counter(g).most_common(1)[0][1] for g in groups.values()) / len(truth)


def mode_recovery(assignments, true_mode):
    """Mean over classes of NMI and purity between arg-max sub-prompts and true modes. ``assignments``: the
    summary's ``{"impath", "label", "subprompt"}`` lists; ``true_mode``: impath -> mode."""
    by_class = defaultdict(lambda: ([], []))
    for impath, label, sub in zip(assignments["impath"], assignments["label"], assignments["subprompt"]):
        by_class[label][0].append(true_mode[impath])
        by_class[label][1].append(sub)
    nmis = [nmi(t, p) for t, p in by_class.values()]
    purities = [purity(t, p) for t, p in by_class.values()]
    return sum(nmis) / len(nmis), sum(purities) / len(purities)


def format_diagnostics(diag):
    """One log line."""
    return (f"collapse K {diag['K']} offset_cos {diag['offset_cos']:.4f} feature_cos {diag['feature_cos']:.4f} "
            f"eff_k {diag['eff_k']:.3f} top1_share {diag['top1_share']:.3f} dead {diag['dead']:.2f} "
            f"collapsed_frac {diag['collapsed_frac']:.3f} collapsed {diag['collapsed']}")
