"""The earlier system's objective (configs/trainers/MixPrompt/seed.yaml): each term against its formula, the
defaults that keep today's objective, the diagnostics that say why sub-prompts stay together."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from trainers import mixprompt_model as mm
from trainers.mixprompt import MixPrompt
from trainers.mixprompt_diagnostics import collapse_diagnostics

SEED = "configs/trainers/MixPrompt/seed.yaml"
MP = "configs/trainers/MixPrompt/vit_b16.yaml"


def _problem(seed=0, batch=6, n_cls=4, n_sub=3, dim=16, scale=50.0):
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(n_cls, dim, generator=g), dim=-1)
    offsets = (torch.randn(n_cls, n_sub, dim, generator=g) * 0.1).requires_grad_()
    images = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    labels = torch.randint(n_cls, (batch,), generator=g)
    feats = mm.feature_subprompts(base, offsets)
    return offsets, feats, mm.subprompt_scores(images, feats, scale), labels


def test_pull_loss_is_the_gamma_weighted_own_class_similarity_and_only_pulls():
    offsets, _, scores, labels = _problem()
    gamma = mm.responsibilities(mm.own_class_scores(scores, labels).detach(), 0.5)
    loss = mm.pull_loss(scores, labels, gamma)
    expected = -sum((gamma[i] * scores[i, labels[i]]).sum() for i in range(len(labels))) / len(labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    absent = [c for c in range(offsets.shape[0]) if c not in labels.tolist()]
    assert absent, "the problem must leave a class out of the batch"
    for c in range(offsets.shape[0]):  # no push: classes outside the batch get no gradient at all
        assert (offsets.grad[c].abs().sum() == 0) == (c in absent)


def test_class_loss_divides_the_pooled_scores_by_the_temperature():
    _, _, scores, labels = _problem()
    expected = F.cross_entropy(scores.max(dim=-1).values / 0.07, labels)
    torch.testing.assert_close(mm.class_loss(scores, labels, "max", 0.07), expected)
    assert torch.equal(mm.class_loss(scores, labels, "lse"), F.cross_entropy(mm.pool_scores(scores, "lse"), labels))


def test_offset_l2_reductions():
    delta = torch.randn(3, 4, 16)
    torch.testing.assert_close(mm.offset_l2(delta, "sum_d"), (delta ** 2).sum(-1).mean())
    torch.testing.assert_close(mm.offset_l2(delta, "mean"), (delta ** 2).mean())
    torch.testing.assert_close(mm.offset_l2(delta, "sum_d"), 16 * mm.offset_l2(delta, "mean"))


def test_detached_image_entropy_carries_no_gradient_and_the_other_form_does():
    offsets, _, scores, labels = _problem()
    own = mm.own_class_scores(scores, labels)
    gamma = mm.responsibilities(own.detach(), 1.0)
    detached = mm.image_entropy_loss(own, gamma, 1.0, "image_detached")
    torch.testing.assert_close(detached, -mm.entropy(gamma).mean())
    assert not detached.requires_grad
    live = mm.image_entropy_loss(own, gamma, 1.0, "image")
    torch.testing.assert_close(live, detached)  # same value at the same tau
    live.backward()
    assert offsets.grad.abs().sum() > 0


def test_random_coordinate_init_gives_the_earlier_systems_initial_cosine():
    offsets = mm.random_coordinate_offsets((50, 8, 512), 0.01, torch.Generator().manual_seed(0))
    assert offsets.std().item() == pytest.approx(0.01, rel=0.02)
    assert offsets.norm(dim=-1).mean().item() == pytest.approx(0.01 * math.sqrt(512), rel=0.02)
    base = F.normalize(torch.randn(50, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    cos = mm.pairwise_cosine(mm.feature_subprompts(base, offsets)).mean().item()
    assert cos == pytest.approx(1 / (1 + 512 * 0.01 ** 2), abs=0.005)  # 0.951


def test_default_objective_is_todays_objective():
    offsets, feats, scores, labels = _problem()
    gamma = mm.responsibilities(mm.own_class_scores(scores, labels).detach(), 0.5)
    loss, _ = mm.MixPromptObjective(offset_reg_weight=1e-4)(scores, labels, gamma, feats, offsets)
    own = mm.own_class_scores(scores, labels)
    mixture = 0.5 * mm.mixture_loss(scores, labels, gamma) + 0.5 * -(gamma * own).sum(-1).mean()  # ce_pull, share 0.5
    expected = (0.5 * mixture + 0.5 * F.cross_entropy(mm.pool_scores(scores, "lse"), labels)
                + 1e-4 * offsets.pow(2).sum(-1).mean())
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_ce_pull_mixes_the_cross_entropy_and_the_pull_by_its_share(share):
    _, _, scores, labels = _problem()
    gamma = mm.responsibilities(mm.own_class_scores(scores, labels).detach(), 0.5)
    mixed = mm.ce_pull_loss(scores, labels, gamma, share)
    torch.testing.assert_close(mixed, (1 - share) * mm.mixture_loss(scores, labels, gamma)
                               + share * mm.pull_loss(scores, labels, gamma))


def test_seed_objective_term_by_term():
    offsets, feats, scores, labels = _problem()
    tau = 0.3
    gamma = mm.responsibilities(mm.own_class_scores(scores, labels).detach(), tau)
    objective = mm.MixPromptObjective(0.5, "max", 0.001, mixture="pull", class_temperature=0.07,
                                      offset_reg_reduction="mean", entropy="image", entropy_weight=0.2)
    loss, terms = objective(scores, labels, gamma, feats, offsets, tau=tau)
    own = mm.own_class_scores(scores, labels)
    expected = (0.5 * -(gamma * own).sum(-1).mean()
                + 0.5 * F.cross_entropy(scores.max(-1).values / 0.07, labels)
                + 0.001 * (offsets ** 2).mean()
                - 0.2 * mm.entropy(F.softmax(own / tau, dim=-1)).mean())
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"loss_mix", "loss_cls", "loss_ent"}


def test_seed_yaml_builds_the_earlier_objective_and_recipe(build_trainer_for):
    trainer = build_trainer_for("MixPrompt", config=SEED, opts=["TRAINER.MIXPROMPT.K", "3"])
    objective = trainer.objective
    assert (objective.mixture, objective.pool, objective.class_temperature, objective.offset_reg_reduction,
            objective.offset_reg_weight, objective.lambda_mixture) == ("pull", "max", 0.07, "mean", 0.001, 0.5)
    m, optim = trainer.cfg.TRAINER.MIXPROMPT, trainer.cfg.OPTIM
    assert (m.SIM_SCALE, m.TAU_START, m.TAU_END, m.TAU_SCHEDULE, m.INIT, m.OFFSET_INIT_SCALE, m.EVAL_POOL,
            m.WARMUP_STEPS) == (50.0, 1.0, 0.05, "linear", "random_coordinate", 0.01, "max", 2000)
    assert (optim.NAME, optim.LR, optim.WEIGHT_DECAY, optim.WARMUP_EPOCH) == ("adam", 5e-4, 0.0, 0)
    with open(SEED) as f:  # the test harness sets its own batch size
        assert "TRAIN_X:\n    BATCH_SIZE: 16\n" in f.read()
    assert isinstance(trainer.optim, torch.optim.Adam)
    offsets = trainer.model.prompt_learner.offsets.detach()
    assert offsets.std().item() == pytest.approx(0.01, rel=0.2)


def test_step_warmup_ramps_the_lr_from_zero_over_the_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.Adam([param], lr=5e-4)
    sched = SimpleNamespace(get_last_lr=lambda: [5e-4])
    fake = SimpleNamespace(cfg=SimpleNamespace(TRAINER=SimpleNamespace(MIXPROMPT=SimpleNamespace(WARMUP_STEPS=20))),
                           train_loader_x=range(8), optim=optim, sched=sched)
    seen = []
    for epoch in range(4):
        for batch_idx in range(8):
            fake.epoch, fake.batch_idx = epoch, batch_idx
            MixPrompt.step_warmup(fake)
            seen.append(optim.param_groups[0]["lr"])
    assert seen[0] == 0.0
    assert seen[10] == pytest.approx(5e-4 * 10 / 20)
    assert seen[20:] == [pytest.approx(5e-4)] * 12


@pytest.mark.parametrize("opts, key", [
    (["TRAINER.MIXPROMPT.MIXTURE_LOSS", "push"], "TRAINER.MIXPROMPT.MIXTURE_LOSS"),
    (["TRAINER.MIXPROMPT.OFFSET_REG_REDUCTION", "sum"], "TRAINER.MIXPROMPT.OFFSET_REG_REDUCTION"),
    (["TRAINER.MIXPROMPT.ENTROPY", "marginal"], "TRAINER.MIXPROMPT.ENTROPY"),
    (["TRAINER.MIXPROMPT.ENTROPY_WEIGHT", "0.5"], "TRAINER.MIXPROMPT.ENTROPY_WEIGHT is set"),
    (["TRAINER.MIXPROMPT.CLASS_TEMPERATURE", "0.0"], "TRAINER.MIXPROMPT.CLASS_TEMPERATURE"),
    (["TRAINER.MIXPROMPT.WARMUP_STEPS", "-1"], "TRAINER.MIXPROMPT.WARMUP_STEPS"),
    (["TRAINER.MIXPROMPT.PULL_SHARE", "1.5"], "TRAINER.MIXPROMPT.PULL_SHARE"),
    (["TRAINER.MIXPROMPT.SINKHORN_POWER", "-0.1"], "TRAINER.MIXPROMPT.SINKHORN_POWER"),
    (["TRAINER.MIXPROMPT.BALANCE", "none", "TRAINER.MIXPROMPT.SINKHORN_POWER", "0.5"],
     "TRAINER.MIXPROMPT.SINKHORN_POWER is set"),
    (["TRAINER.MIXPROMPT.MIXTURE_LOSS", "ce", "TRAINER.MIXPROMPT.PULL_SHARE", "0.2"],
     "TRAINER.MIXPROMPT.PULL_SHARE is set"),
])
def test_bad_seed_keys_stop_at_startup_naming_the_key(build_trainer_for, opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_trainer_for("MixPrompt", config=MP, opts=opts)


def test_movement_diagnostics_separate_winners_from_sub_prompts_that_never_move():
    g = torch.Generator().manual_seed(0)
    initial = F.normalize(torch.randn(2, 3, 8, generator=g), dim=-1)
    final = initial.clone()
    final[:, 0] = F.normalize(initial[:, 0] + torch.randn(2, 8, generator=g), dim=-1)  # only sub-prompt 0 moves
    gamma = torch.tensor([[0.9, 0.05, 0.05]] * 4 + [[0.1, 0.1, 0.8]] * 2)  # class 0: k0 x4; class 1: k0, k2
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    gamma[4] = torch.tensor([0.8, 0.1, 0.1])
    diag = collapse_diagnostics(torch.zeros(2, 3, 8), final, gamma, labels, initial_features=initial)
    assert diag["per_class"]["wins"] == [[4, 0, 0], [1, 0, 1]]
    moved = torch.tensor(diag["per_class"]["moved"])
    assert (moved[:, 1:].abs() < 1e-6).all() and (moved[:, 0] > 0.01).all()
    assert diag["moved_losers"] == pytest.approx(0.0, abs=1e-6)
    assert diag["moved_winners"] == pytest.approx(float(moved[:, 0].sum()) / 3, rel=1e-5)  # k2 of class 1 won, unmoved
    assert diag["initial_feature_cos"] == pytest.approx(float(mm.pairwise_cosine(initial).mean()), rel=1e-5)
    assert "moved" not in collapse_diagnostics(torch.zeros(2, 3, 8), final, gamma, labels)
