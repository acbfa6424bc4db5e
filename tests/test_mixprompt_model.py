"""MixPrompt's maths on random tensors: schedule, responsibilities, pooling, losses, balance, diagnostics."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainers import mixprompt_model as mm
from trainers.mixprompt_diagnostics import collapse_diagnostics


@pytest.mark.parametrize("schedule", mm.TAU_SCHEDULES)
def test_tau_schedule_hits_its_endpoints_and_decreases(schedule):
    taus = [mm.tau_at(p / 20, 1.0, 0.05, schedule) for p in range(21)]
    assert taus[0] == pytest.approx(1.0)
    assert taus[-1] == pytest.approx(0.05)
    assert all(a >= b - 1e-12 for a, b in zip(taus, taus[1:]))
    assert mm.tau_at(1.5, 1.0, 0.05, schedule) == pytest.approx(0.05)  # clamped


def test_responsibilities_sum_to_one():
    own = torch.randn(7, 5) * 30
    for tau in (1.0, 0.05):
        gamma = mm.responsibilities(own, tau)
        assert torch.allclose(gamma.sum(-1), torch.ones(7))
        assert (gamma >= 0).all()


def test_pooling_agrees_with_brute_force():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(3, 8), dim=-1)
    subprompts = F.normalize(torch.randn(4, 5, 8), dim=-1)
    scores = mm.subprompt_scores(image, subprompts, 20.0)
    for b in range(3):
        for c in range(4):
            sims = [20.0 * float(image[b] @ subprompts[c, k]) for k in range(5)]
            assert scores[b, c].tolist() == pytest.approx(sims, abs=1e-4)
            assert float(mm.pool_scores(scores, "max")[b, c]) == pytest.approx(max(sims), abs=1e-4)
            assert float(mm.pool_scores(scores, "mean")[b, c]) == pytest.approx(sum(sims) / 5, abs=1e-4)
            lse = math.log(sum(math.exp(s) for s in sims) / 5)
            assert float(mm.pool_scores(scores, "lse")[b, c]) == pytest.approx(lse, abs=1e-4)


def test_mixture_loss_matches_its_definition():
    torch.manual_seed(1)
    scores = torch.randn(3, 4, 2)
    labels = torch.tensor([0, 3, 1])
    gamma = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    expected = 0.0
    for i in range(3):
        log_p = torch.log_softmax(scores[i].flatten(), dim=0).reshape(4, 2)
        expected -= float((gamma[i] * log_p[labels[i]]).sum())
    assert float(mm.mixture_loss(scores, labels, gamma)) == pytest.approx(expected / 3, abs=1e-5)


def _features_from(offsets, base):
    return F.normalize(base.unsqueeze(1) + offsets, dim=-1)


def test_diversity_loss_moves_the_offsets_and_pushes_features_apart():
    torch.manual_seed(0)
    base = F.normalize(torch.randn(3, 16), dim=-1)
    for kind in ("cosine", "orthogonal"):
        offsets = (0.01 * torch.randn(3, 4, 16)).requires_grad_()
        loss = mm.diversity_loss(_features_from(offsets, base), kind)
        loss.backward()
        assert offsets.grad.abs().sum() > 0, kind
        before = mm.pairwise_cosine(_features_from(offsets, base)).mean()
        with torch.no_grad():
            offsets -= 0.5 * offsets.grad
        after = mm.pairwise_cosine(_features_from(offsets, base)).mean()
        assert after < before, kind


def test_usage_balance_carries_gradient_only_when_responsibilities_are_not_detached():
    torch.manual_seed(0)
    base = F.normalize(torch.randn(2, 16), dim=-1)
    offsets = (0.1 * torch.randn(2, 3, 16)).requires_grad_()
    image = F.normalize(torch.randn(6, 16), dim=-1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    running = torch.full((2, 3), 1 / 3)
    own = mm.own_class_scores(mm.subprompt_scores(image, _features_from(offsets, base), 100.0), labels)
    loss, usage, classes = mm.usage_balance_loss(mm.responsibilities(own, 0.5), labels, running, 0.9)
    loss.backward()
    assert offsets.grad.abs().sum() > 0
    assert torch.allclose(usage.sum(-1), torch.ones(2))
    # the earlier implementation's bug: the same term on detached responsibilities is a constant
    dead, _, _ = mm.usage_balance_loss(mm.responsibilities(own.detach(), 0.5), labels, running, 0.9)
    assert not dead.requires_grad


def test_usage_balance_is_zero_when_uniform_and_max_when_one_subprompt_takes_all():
    labels = torch.tensor([0, 0])
    uniform = torch.full((2, 4), 0.25)
    loss, _, _ = mm.usage_balance_loss(uniform, labels, torch.full((1, 4), 0.25), 0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    onehot = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    loss, _, _ = mm.usage_balance_loss(onehot, labels, torch.full((1, 4), 0.25), 0.0)
    assert float(loss) == pytest.approx(1.0, abs=1e-4)


def test_sinkhorn_balances_usage_even_when_one_subprompt_dominates():
    own = torch.zeros(8, 4)
    own[:, 0] = 5.0  # every image prefers sub-prompt 0
    gamma = mm.sinkhorn_balance(own, tau=1.0, n_iters=200)
    assert torch.allclose(gamma.sum(1), torch.ones(8), atol=1e-4)
    assert torch.allclose(gamma.sum(0), torch.full((4,), 2.0), atol=1e-3)


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_sinkhorn_gives_every_image_a_target_when_scores_are_sharp(power):
    """At a small tau, an image whose best score lies far below another image's best must still get
    responsibilities summing to one (a shared shift of exp underflowed such rows to zero)."""
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    anchors = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    own = 100.0 * features @ anchors.t()  # (N, K) scores a * cos, spread over about +-60
    gamma = mm.sinkhorn_balance(own, tau=0.05, n_iters=50, marginal_power=power)
    assert torch.allclose(gamma.sum(1), torch.ones(64), atol=1e-4)
    if power == 0.0:
        assert torch.allclose(gamma, mm.responsibilities(own, 0.05), atol=1e-5)


def test_sinkhorn_power_relaxes_usage_between_balanced_and_plain_responsibilities():
    g = torch.Generator().manual_seed(0)
    own = 3.0 * torch.randn(40, 8, generator=g)  # (N, K)
    plain = mm.responsibilities(own, 0.5)
    usage_spread = {}
    for power in (0.0, 0.5, 1.0):
        gamma = mm.sinkhorn_balance(own, tau=0.5, n_iters=200, marginal_power=power)
        assert torch.allclose(gamma.sum(1), torch.ones(40), atol=1e-4)
        usage_spread[power] = float(gamma.sum(0).std())
    assert torch.allclose(mm.sinkhorn_balance(own, 0.5, 200, 0.0), plain, atol=1e-5)
    assert usage_spread[1.0] < 1e-3 < usage_spread[0.5] < usage_spread[0.0]
    # the relaxed iteration has a fixed point of its own: more iterations do not drift toward equal usage
    assert torch.allclose(mm.sinkhorn_balance(own, 0.5, 200, 0.5), mm.sinkhorn_balance(own, 0.5, 1000, 0.5),
                          atol=1e-5)


def test_diagnostics_flag_the_collapse_signature_and_pass_specialised_subprompts():
    torch.manual_seed(0)
    n_cls, n_sub, dim = 3, 4, 32
    labels = torch.arange(n_cls).repeat_interleave(8)
    # collapse: diverse raw offsets, tiny next to the base, and one sub-prompt winning everything
    base = F.normalize(torch.randn(n_cls, dim), dim=-1)
    offsets = 0.05 * F.normalize(torch.randn(n_cls, n_sub, dim), dim=-1)
    features = _features_from(offsets, base)
    gamma = torch.zeros(len(labels), n_sub)
    gamma[:, 0] = 1.0
    diag = collapse_diagnostics(offsets, features, gamma, labels)
    assert diag["feature_cos"] > 0.99 and diag["offset_cos"] < 0.5
    assert diag["eff_k"] == pytest.approx(1.0) and diag["top1_share"] == pytest.approx(1.0)
    assert diag["dead"] == pytest.approx(n_sub - 1) and diag["collapsed"]
    # specialised: orthogonal features, each sub-prompt wins 2 of 8 images
    spread = torch.eye(n_sub).repeat(len(labels) // n_sub, 1)
    ortho = F.normalize(torch.eye(n_sub, dim).unsqueeze(0).repeat(n_cls, 1, 1), dim=-1)
    diag = collapse_diagnostics(ortho, ortho, spread, labels)
    assert diag["feature_cos"] == pytest.approx(0.0, abs=1e-6)
    assert diag["eff_k"] == pytest.approx(n_sub) and diag["dead"] == 0 and not diag["collapsed"]


def test_objective_is_the_documented_sum_of_its_terms():
    g = torch.Generator().manual_seed(0)
    n_cls, n_sub, dim, batch = 5, 3, 8, 6
    base = F.normalize(torch.randn(n_cls, dim, generator=g), dim=-1)
    offsets = torch.randn(n_cls, n_sub, dim, generator=g) * 0.3
    features = mm.feature_subprompts(base, offsets)  # (C, K, D)
    assert torch.allclose(features, F.normalize(base[:, None] + offsets, dim=-1))
    images = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    labels = torch.tensor([0, 1, 1, 2, 4, 4])
    scores = mm.subprompt_scores(images, features, 50.0)  # (B, C, K)
    tau = 0.5
    gamma = mm.responsibilities(mm.own_class_scores(scores, labels), tau).detach()
    running = torch.full((n_cls, n_sub), 1 / n_sub)
    objective = mm.MixPromptObjective(lambda_mixture=0.3, pool="max", offset_reg_weight=0.01, diversity="cosine",
                                      diversity_weight=0.2, balance="marginal_entropy", balance_weight=0.5,
                                      balance_momentum=0.8, mixture="ce")
    loss, terms = objective(scores, labels, gamma, features, offsets, tau, running)
    # by hand, from the formulas
    log_p = F.log_softmax(scores.reshape(batch, -1), dim=-1).reshape(batch, n_cls, n_sub)
    mix = -(gamma * log_p[torch.arange(batch), labels]).sum(-1).mean()
    cls = F.cross_entropy(scores.max(-1).values, labels)
    reg = offsets.pow(2).sum(-1).mean()
    gram = features @ features.transpose(1, 2)
    div = gram[:, ~torch.eye(n_sub, dtype=torch.bool)].mean()
    soft = F.softmax(mm.own_class_scores(scores, labels) / tau, dim=-1)
    usage = torch.stack([0.8 * running[c] + 0.2 * soft[labels == c].mean(0) for c in labels.unique()])
    bal = 1 - (-(usage * usage.log()).sum(-1) / math.log(n_sub)).mean()
    expected = 0.3 * mix + 0.7 * cls + 0.01 * reg + 0.2 * div + 0.5 * bal
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["loss_mix"] == pytest.approx(mix.item(), rel=1e-5)
    assert terms["loss_div"] == pytest.approx(div.item(), rel=1e-5)
    assert terms["loss_bal"] == pytest.approx(bal.item(), rel=1e-5)
    mm.update_running_usage(running, terms["classes"], terms["batch_usage"], 0.8)
    assert torch.allclose(running[1], 0.8 / n_sub + 0.2 * soft[1:3].mean(0))
    assert torch.allclose(running[3], torch.full((n_sub,), 1 / n_sub))  # no image of class 3: unchanged


def _inertia(points, centroids):
    return torch.cdist(points, centroids).min(dim=1).values.pow(2).sum().item()


def test_kmeans_restarts_keep_the_lowest_inertia_run_and_one_restart_is_a_single_run():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(12, 6, generator=generator) * 0.3 + shift for shift in (-2.0, 0.0, 2.0, 4.0)])
    single = [mm.kmeans(points, 4, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    assert torch.equal(mm.kmeans(points, 4, generator=torch.Generator().manual_seed(1), restarts=1), single[1])
    # restarts draw their seeds from the one generator in turn: the chosen run is one of them, the best
    runs_generator = torch.Generator().manual_seed(5)
    runs = [mm.kmeans(points, 4, generator=runs_generator) for _ in range(6)]
    best = mm.kmeans(points, 4, generator=torch.Generator().manual_seed(5), restarts=6)
    assert _inertia(points, best) == pytest.approx(min(_inertia(points, run) for run in runs))
    assert any(torch.equal(best, run) for run in runs)


def test_clustered_offsets_start_at_or_toward_the_class_clusters():
    """Two tight groups per class: with at_means the sub-prompts start at the groups' mean directions, whatever
    b[c] is; without, their offsets point along the groups' mean residuals with norm ``scale``; k-means and
    Ward's clustering alike, each cluster's size returned. A class with fewer images than K keeps random offsets
    (expected norm ``scale``) and size 1 for the rest."""
    generator = torch.Generator().manual_seed(0)
    dim, n_sub = 8, 2
    centres = torch.nn.functional.normalize(torch.randn(2, n_sub, dim, generator=generator), dim=-1)  # (C, K, D)
    features = torch.cat([centres[c, k] + 0.01 * torch.randn(4 + k, dim, generator=generator)
                          for c in range(2) for k in range(n_sub)])  # (18, D): groups of 4 and 5 images
    labels = torch.arange(2).repeat_interleave(9)
    base = torch.nn.functional.normalize(torch.randn(2, dim, generator=generator), dim=-1)  # (C, D)
    for clustering in ("kmeans", "ward"):
        offsets, sizes = mm.clustered_offsets(features, labels, base, n_sub, 0.3, clustering, at_means=True,
                                              generator=torch.Generator().manual_seed(1))
        start = torch.nn.functional.normalize(base[:, None] + offsets, dim=-1)  # (C, K, D)
        for c in range(2):
            cos = start[c] @ centres[c].T  # (K, K): each sub-prompt at one group, every group taken
            assert cos.max(dim=1).values.min() > 0.999
            assert sorted(zip(cos.argmax(dim=1).tolist(), sizes[c].tolist())) == [(0, 4.0), (1, 5.0)]
        tilted, same_sizes = mm.clustered_offsets(features, labels, base, n_sub, 0.3, clustering,
                                                  generator=torch.Generator().manual_seed(1))
        assert torch.equal(same_sizes, sizes)
        assert torch.allclose(tilted.norm(dim=-1), torch.full((2, n_sub), 0.3))
        residual_groups = centres - centres.mean(dim=1, keepdim=True)  # about where each group lies from its class mean
        assert (torch.nn.functional.cosine_similarity(tilted, residual_groups, dim=-1).max() > 0.99)
    one_image, one_size = mm.clustered_offsets(features[:1], labels[:1], base[:1], 3, 0.3, "ward", at_means=True,
                                               generator=torch.Generator().manual_seed(2))  # (1, 3, D)
    assert torch.allclose(torch.nn.functional.normalize(base[0] + one_image[0, 0], dim=0),
                          torch.nn.functional.normalize(features[0], dim=0), atol=1e-6)
    assert (one_image[0, 1:].norm(dim=-1) < 1.0).all() and one_size.tolist() == [[1.0, 1.0, 1.0]]


def test_ward_clustering_merges_the_cheapest_pair_first():
    # on a line: {0, 1} and {10, 11} merge first (cost 0.5 each); joining them costs 2 x 2 / 4 x 10^2 = 100,
    # less than {10, 11} with {30} (2 / 3 x 19.5^2 = 253.5), so two clusters leave 30 alone
    points = torch.tensor([[30.0], [0.0], [11.0], [1.0], [10.0]])
    assert mm.ward_clusters(points, 3).tolist() == [0, 1, 2, 1, 2]  # numbered by their first point
    assert mm.ward_clusters(points, 2).tolist() == [0, 1, 1, 1, 1]
    assert mm.ward_clusters(points, 5).tolist() == [0, 1, 2, 3, 4]  # as many clusters as points: each alone
    assert mm.ward_means(points, 2).tolist() == [[30.0], [5.5]]


def test_sinkhorn_shares_set_each_subprompt_mass():
    """shares (K,) in any scale: sub-prompt k receives N x shares[k] / sum(shares) images' worth of mass, rows
    stay distributions; without shares the mass is equal."""
    scores = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)) * 5
    shares = torch.tensor([6.0, 4.0, 2.0])
    gamma = mm.sinkhorn_balance(scores, 1.0, n_iters=200, shares=shares)
    assert torch.allclose(gamma.sum(dim=1), torch.ones(12), atol=1e-6)
    assert torch.allclose(gamma.sum(dim=0), torch.tensor([6.0, 4.0, 2.0]), atol=1e-4)
    assert torch.allclose(mm.sinkhorn_balance(scores, 1.0, n_iters=200).sum(dim=0), torch.full((3,), 4.0), atol=1e-4)
