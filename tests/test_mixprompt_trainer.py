"""MixPrompt through the real trainer on generated data with the tiny CLIP."""
import math

import pytest
import torch

from engine.errors import ConfigError
from trainers import mixprompt_model as mm

MP = "configs/trainers/MixPrompt/vit_b16.yaml"


def _batch(trainer):
    torch.manual_seed(0)
    return next(iter(trainer.train_loader_x))


def _offset_grad(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.epoch, trainer.batch_idx = 0, 0
    trainer.before_epoch()
    loss, _, _ = trainer.compute_loss(batch)
    loss.backward()
    return trainer.model.prompt_learner.offsets.grad.clone()


@pytest.mark.parametrize("term, opts", [
    ("diversity", ["TRAINER.MIXPROMPT.DIVERSITY", "orthogonal", "TRAINER.MIXPROMPT.DIVERSITY_WEIGHT"]),
    ("diversity", ["TRAINER.MIXPROMPT.DIVERSITY", "cosine", "TRAINER.MIXPROMPT.DIVERSITY_WEIGHT"]),
    ("balance", ["TRAINER.MIXPROMPT.BALANCE", "marginal_entropy", "TRAINER.MIXPROMPT.BALANCE_WEIGHT"]),
    ("offset L2", ["TRAINER.MIXPROMPT.OFFSET_REG_WEIGHT"]),
])
@pytest.mark.parametrize("space", ["feature", "token"])
def test_every_regularizer_sends_gradient_to_the_offsets(build_trainer_for, term, opts, space):
    """A term that is constant w.r.t. the offsets (e.g. computed from detached responsibilities) leaves
    the gradient unchanged when its weight changes, and fails here."""
    common = ["TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.OFFSET_SPACE", space, "TRAINER.MIXPROMPT.INIT",
              "random", "TRAINER.MIXPROMPT.BALANCE", "none", "TRAINER.MIXPROMPT.DIVERSITY", "none",
              "TRAINER.MIXPROMPT.OFFSET_REG_WEIGHT", "0.0"]
    grads = []
    for weight in ("0.0", "1.0"):
        trainer = build_trainer_for("MixPrompt", config=MP, opts=common + opts + [weight])
        grads.append(_offset_grad(trainer, _batch(trainer)))
    assert not torch.allclose(grads[0], grads[1]), f"{term} sends no gradient to the offsets"


def _eval_logits(trainer):
    outputs = []
    original = trainer.evaluator.process

    def record(output, label):
        outputs.append(output.detach().clone())
        original(output, label)

    trainer.evaluator.process = record
    trainer.test()
    trainer.evaluator.process = original
    return torch.cat(outputs)


@pytest.mark.parametrize("space", ["feature", "token"])
def test_eval_cache_matches_uncached_and_is_invalidated_by_a_step_and_a_load(build_trainer_for, tmp_path, space):
    trainer = build_trainer_for("MixPrompt", config=MP, opts=[
        "TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.OFFSET_SPACE", space, "TRAINER.MIXPROMPT.INIT", "random"])
    cached = _eval_logits(trainer)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        uncached = torch.cat([trainer.model(batch["img"]) for batch in trainer.test_loader])
    assert torch.allclose(cached, uncached, atol=1e-5)

    trainer.save_model(0, str(tmp_path / "saved"))
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 99
    trainer.before_epoch()
    trainer.forward_backward(_batch(trainer))
    after_step = _eval_logits(trainer)
    assert not torch.allclose(after_step, cached), "evaluation did not see the optimizer step"

    trainer.load_model(str(tmp_path / "saved"), epoch=1)
    assert torch.allclose(_eval_logits(trainer), cached, atol=1e-5), "evaluation did not see the loaded weights"


@pytest.mark.parametrize("opts, key", [
    (["TRAINER.MIXPROMPT.K", "0"], "TRAINER.MIXPROMPT.K"),
    (["TRAINER.MIXPROMPT.TAU_START", "0.1", "TRAINER.MIXPROMPT.TAU_END", "0.5"], "TAU_END"),
    (["TRAINER.MIXPROMPT.TAU_END", "-0.1"], "TAU_START / TAU_END"),
    (["TRAINER.MIXPROMPT.TAU_START", "0.0"], "TAU_START / TAU_END"),
    (["TRAINER.MIXPROMPT.OFFSET_SPACE", "pixel"], "TRAINER.MIXPROMPT.OFFSET_SPACE"),
    (["TRAINER.MIXPROMPT.POOL", "median"], "TRAINER.MIXPROMPT.POOL"),
    (["TRAINER.MIXPROMPT.BALANCE", "minimum_usage"], "TRAINER.MIXPROMPT.BALANCE"),
    (["TRAINER.MIXPROMPT.SCOPE", "class", "DATASET.SUBSAMPLE_CLASSES", "new"], "TRAINER.MIXPROMPT.SCOPE"),
    (["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "kmeans"], "TRAINER.MIXPROMPT.INIT"),
    (["TRAINER.MIXPROMPT.SINKHORN_ITERS", "0"], "TRAINER.MIXPROMPT.SINKHORN_ITERS"),
    (["TRAINER.MIXPROMPT.KMEANS_RESTARTS", "0"], "TRAINER.MIXPROMPT.KMEANS_RESTARTS"),
    (["TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.KMEANS_RESTARTS", "5",
      "TRAINER.MIXPROMPT.CLUSTERING", "kmeans"], "applies only when"),
    (["TRAINER.MIXPROMPT.CLUSTERING", "spectral"], "TRAINER.MIXPROMPT.CLUSTERING"),
    (["TRAINER.MIXPROMPT.KMEANS_RESTARTS", "5"], "applies only when k-means"),  # the default clustering is Ward's
    (["TRAINER.MIXPROMPT.SCOPE", "shared", "TRAINER.MIXPROMPT.INIT", "cluster_means"],
     "INIT cluster_means starts each"),
    (["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "clusters"], "TRAINER.MIXPROMPT.INIT"),
    (["TRAINER.MIXPROMPT.SINKHORN_SHARES", "usage"], "TRAINER.MIXPROMPT.SINKHORN_SHARES"),
    (["TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.SINKHORN_SHARES", "clusters"],
     "SINKHORN_SHARES clusters keeps"),
    (["TRAINER.MIXPROMPT.BALANCE", "none", "TRAINER.MIXPROMPT.SINKHORN_SHARES", "clusters"],
     "SINKHORN_SHARES clusters keeps"),
    # a key of another mode, set away from its default, would be silently ignored: refused
    (["TRAINER.MIXPROMPT.N_CTX", "8"], "TRAINER.MIXPROMPT.N_CTX is set to 8 but applies only with "
                                        "TRAINER.MIXPROMPT.OFFSET_SPACE token"),
    (["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", "0.0",
      "TRAINER.MIXPROMPT.TEMPLATES", "dataset"], "TRAINER.MIXPROMPT.TEMPLATES is set"),
    (["TRAINER.MIXPROMPT.BALANCE_WEIGHT", "0.5"], "TRAINER.MIXPROMPT.BALANCE_WEIGHT"),
    (["TRAINER.MIXPROMPT.BALANCE", "none", "TRAINER.MIXPROMPT.SINKHORN_ITERS", "10"], "SINKHORN_ITERS"),
    (["TRAINER.MIXPROMPT.DIVERSITY", "none", "TRAINER.MIXPROMPT.DIVERSITY_WEIGHT", "0.5"], "DIVERSITY_WEIGHT"),
    (["TRAINER.MIXPROMPT.TRAIN_FEATURES", "views"], "TRAINER.MIXPROMPT.TRAIN_FEATURES"),
    (["TRAINER.MIXPROMPT.INIT", "features"], "TRAINER.MIXPROMPT.INIT_FEATURES_FILE"),  # no file given
    (["TRAINER.MIXPROMPT.INIT_FEATURES_FILE", "start.pt"], "TRAINER.MIXPROMPT.INIT_FEATURES_FILE is set"),
    (["TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "features"], "TRAINER.MIXPROMPT.INIT"),
    # cached augmented views would be computed and never used by the clean M-step
    (["TRAINER.MIXPROMPT.TRAIN_FEATURES", "clean", "TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", "2"],
     "TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS"),
])
def test_bad_mixprompt_settings_stop_at_startup_naming_the_key(build_trainer_for, opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("/", "/")):
        build_trainer_for("MixPrompt", config=MP, opts=opts)


def test_init_features_starts_every_subprompt_at_the_given_feature(build_trainer_for, tmp_path):
    opts = ["TRAINER.MIXPROMPT.K", "3"]
    n_cls, n_sub, dim = build_trainer_for("MixPrompt", config=MP, opts=opts).model.prompt_learner.offsets.shape
    start = torch.randn(n_cls, n_sub, dim, generator=torch.Generator().manual_seed(0)) * 5  # (C, K, D), any norm
    torch.save(start, tmp_path / "start.pt")
    features_opts = opts + ["TRAINER.MIXPROMPT.INIT", "features", "TRAINER.MIXPROMPT.INIT_FEATURES_FILE",
                            str(tmp_path / "start.pt")]
    trainer = build_trainer_for("MixPrompt", config=MP, opts=features_opts)
    initial = trainer.model.text_features().detach().float().cpu()  # (C, K, D)
    assert torch.allclose(initial, torch.nn.functional.normalize(start, dim=-1), atol=1e-3)
    # the run keeps its own copy: a resumed run into the same folder starts from it without the original
    assert torch.equal(torch.load(tmp_path / "out" / "init_features.pt"), start)
    (tmp_path / "start.pt").unlink()
    again = build_trainer_for("MixPrompt", config=MP, opts=features_opts)
    assert torch.equal(again.model.text_features().detach().float().cpu(), initial)
    (tmp_path / "out" / "init_features.pt").unlink()
    with pytest.raises(ConfigError, match=r"INIT_FEATURES_FILE: INIT features needs an existing file.*INIT random"):
        build_trainer_for("MixPrompt", config=MP, opts=features_opts)
    torch.save(start, tmp_path / "start.pt")
    torch.save(start[:, :2], tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match=r"INIT_FEATURES_FILE.*wrong\.pt.*\(classes, K, D\)"):
        build_trainer_for("MixPrompt", config=MP, opts=features_opts[:-1] + [str(tmp_path / "wrong.pt")])
    with pytest.raises(ConfigError, match=r"INIT features .* needs TRAINER\.MIXPROMPT\.SCOPE class"):
        build_trainer_for("MixPrompt", config=MP, opts=features_opts + ["TRAINER.MIXPROMPT.SCOPE", "shared"])


@pytest.mark.parametrize("source", ["auto", "clean", "augmented"])
def test_train_features_clean_trains_on_batches_of_clean_features_augmented_on_images(build_trainer_for, source):
    """TRAIN_FEATURES clean (and auto without cached views, the default): training batches are the training
    images' test-transform features (the E-step's), in the image loader's batches, and no image is loaded;
    augmented encodes the batch's pixels."""
    trainer = build_trainer_for("MixPrompt", config=MP, opts=["TRAINER.MIXPROMPT.K", "2",
                                                              "TRAINER.MIXPROMPT.TRAIN_FEATURES", source])
    assert trainer.train_feature_source() == ("augmented" if source == "augmented" else "clean")
    image_loader = trainer.dm.train_loader_x  # the data manager's loader of training images
    torch.manual_seed(7)
    image_batches = [batch["index"].tolist() for batch in image_loader]
    if source == "augmented":
        assert trainer.train_loader_x is image_loader
        batch = _batch(trainer)
        blank = dict(batch, img=torch.zeros_like(batch["img"]))
        trainer.epoch, trainer.batch_idx = 0, 0
        trainer.before_epoch()
        assert trainer.compute_loss(batch)[0].item() != trainer.compute_loss(blank)[0].item()
        return
    torch.manual_seed(7)
    batches = list(trainer.train_loader_x)
    assert [batch["index"].tolist() for batch in batches] == image_batches  # the same batches, the same order
    features, labels, _ = trainer.train_features()
    for batch in batches:
        assert "img" not in batch
        assert torch.equal(batch["features"], features[batch["index"]])
        assert torch.equal(batch["label"], labels[batch["index"]])
    trainer.epoch, trainer.batch_idx = 0, 0
    trainer.before_epoch()
    _, _, target = trainer.compute_loss(batches[0])
    assert torch.equal(target, labels[batches[0]["index"]])


@pytest.mark.parametrize("clustering", ["ward", "kmeans"])
def test_cluster_means_start_each_subprompt_at_a_cluster_mean_of_its_class_images(build_trainer_for, clustering):
    """INIT cluster_means: every class's epoch-0 sub-prompt features are the directions of the mean features of
    the clusters of that class's clean training features (CLUSTERING; k-means seeded with the run's seed); the
    default INIT (clusters) tilts them from the class text feature instead."""
    opts = ["TRAINER.MIXPROMPT.K", "2", "TRAINER.MIXPROMPT.CLUSTERING", clustering]
    trainer = build_trainer_for("MixPrompt", config=MP, opts=opts + ["TRAINER.MIXPROMPT.INIT", "cluster_means"])
    initial = trainer.model.text_features().detach().float().cpu()  # (C, K, D)
    features, labels, _ = trainer.train_features()
    n_cls, n_sub, dim = initial.shape
    generator = torch.Generator().manual_seed(trainer.cfg.SEED)
    mm.random_offsets((n_cls, n_sub, dim), 1.0, generator)  # the draws clustered_offsets makes before clustering
    for c in range(n_cls):
        points = features[labels == c].float().cpu()
        residuals = points - points.mean(0)
        if clustering == "ward":
            means = mm.ward_means(residuals, 2) + points.mean(0)  # (K, D)
        else:
            means = mm.kmeans(residuals, 2, generator=generator) + points.mean(0)
        assert torch.allclose(initial[c], torch.nn.functional.normalize(means, dim=-1), atol=1e-4)
    tilted = build_trainer_for("MixPrompt", config=MP, opts=opts).model.text_features().detach().float().cpu()
    base = trainer.model.prompt_learner.base_features.detach().float().cpu()  # (C, D)
    assert (tilted * base[:, None]).sum(-1).min() > (initial * base[:, None]).sum(-1).max()


def test_sinkhorn_shares_clusters_keep_each_subprompt_at_its_start_cluster_size(build_trainer_for):
    """The defaults (INIT auto in feature space, SINKHORN_SHARES auto): the balanced E-step gives each sub-prompt
    as many images' worth of mass as its start cluster has (Ward's clustering of the class), not N / K;
    SINKHORN_SHARES equal restores N / K."""
    opts = ["TRAINER.MIXPROMPT.K", "3"]
    trainer = build_trainer_for("MixPrompt", config=MP, opts=opts)
    features, labels, indices = trainer.train_features()
    gamma = trainer.balanced_e_step(0.3)[indices].cpu()  # (N, K)
    n_cls = int(labels.max()) + 1
    sizes = torch.stack([torch.bincount(mm.ward_clusters(features[labels == c].float().cpu(), 3), minlength=3)
                         for c in range(n_cls)]).float()  # (C, K), in cluster order
    got = torch.stack([gamma[labels.cpu() == c].sum(dim=0) for c in range(n_cls)])  # (C, K)
    assert torch.allclose(got, sizes, atol=0.05)  # Sinkhorn's default 50 iterations, within 0.05 of an image
    assert any(len(set(row.tolist())) > 1 for row in sizes)  # unequal shares: the test tells them apart
    equal = build_trainer_for("MixPrompt", config=MP, opts=opts + ["TRAINER.MIXPROMPT.SINKHORN_SHARES", "equal"])
    gamma = equal.balanced_e_step(0.3)[indices].cpu()
    for c in range(n_cls):
        n_c = int((labels == c).sum())
        assert torch.allclose(gamma[labels.cpu() == c].sum(dim=0), torch.full((3,), n_c / 3), atol=0.05)


def test_the_default_init_is_valid_in_both_offset_spaces(build_trainer_for):
    for space in ("feature", "token"):
        trainer = build_trainer_for("MixPrompt", config=MP, opts=["TRAINER.MIXPROMPT.K", "2",
                                                                  "TRAINER.MIXPROMPT.OFFSET_SPACE", space])
        assert trainer.cfg.TRAINER.MIXPROMPT.INIT == "auto"


def test_shared_scope_scores_new_classes(build_trainer_for):
    trainer = build_trainer_for("MixPrompt", config=MP, opts=[
        "TRAINER.MIXPROMPT.K", "2", "TRAINER.MIXPROMPT.SCOPE", "shared", "DATASET.SUBSAMPLE_CLASSES", "new"])
    assert trainer.model.prompt_learner.offsets.shape[0] == 2  # (K, D): no per-class parameters
    assert trainer.test() >= 0


# ---------------------------------------------------------------------------------------------------------
# Large label spaces: chunked + checkpointed encoding, class sampling (exactness, never timings)

TOKEN = ["TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.OFFSET_SPACE", "token", "TRAINER.MIXPROMPT.INIT", "random",
         "TRAINER.MIXPROMPT.BALANCE", "none"]


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.epoch, trainer.batch_idx = 0, 0
    trainer.before_epoch()
    torch.manual_seed(5)
    loss, _, _ = trainer.compute_loss(batch)
    loss.backward()
    learner = trainer.model.prompt_learner
    grads = [p.grad.clone() for p in learner.parameters() if p.requires_grad]
    return (loss.detach(), *grads)


def test_chunked_checkpointed_token_space_equals_unchunked(build_trainer_for):
    results = []
    for opts in (["TRAINER.MIXPROMPT.ENCODE_CHUNK", "0"],
                 ["TRAINER.MIXPROMPT.ENCODE_CHUNK", "5", "TRAINER.MIXPROMPT.ENCODE_CHECKPOINT", "True"]):
        trainer = build_trainer_for("MixPrompt", config=MP, opts=TOKEN + opts)
        results.append(_loss_and_grads(trainer, _batch(trainer)))
    for full, chunked in zip(*results):
        torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("space", ["feature", "token"])
def test_class_sample_of_all_classes_is_exactly_the_full_loss(build_trainer_for, space):
    opts = ["TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.OFFSET_SPACE", space, "TRAINER.MIXPROMPT.INIT", "random"]
    results = []
    for sample in ("0", "4", "100"):  # the generated cars have 4 classes
        trainer = build_trainer_for("MixPrompt", config=MP, opts=opts + ["TRAINER.MIXPROMPT.CLASS_SAMPLE", sample])
        results.append(_loss_and_grads(trainer, _batch(trainer))[:2])
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])


def test_class_sampling_scores_batch_classes_plus_corrected_negatives(build_trainer_for):
    trainer = build_trainer_for("MixPrompt", config=MP, opts=TOKEN + ["TRAINER.MIXPROMPT.CLASS_SAMPLE", "2",
                                                                      "TRAINER.MIXPROMPT.OFFSET_REG_WEIGHT", "0.0"])
    batch = _batch(trainer)
    batch = {key: value[:1] for key, value in batch.items()}  # one image: 1 batch class + 1 drawn of 3
    seen = []
    original = trainer.model.text_features
    trainer.model.text_features = lambda classes=None: seen.append(classes) or original(classes)
    loss, *grads = _loss_and_grads(trainer, batch)
    offsets_grad = trainer.model.prompt_learner.offsets.grad
    label = int(batch["label"][0])
    classes = seen[0].tolist()
    assert len(classes) == 2 and classes[0] == label and classes[1] != label
    assert offsets_grad[classes].abs().sum() > 0  # the sampled classes learn ...
    others = [c for c in range(4) if c not in classes]
    assert offsets_grad[others].abs().sum() == 0  # ... the unsampled ones are not even encoded
    assert torch.isfinite(loss)


def test_sample_classes_correction_and_remapped_labels():
    from trainers.mixprompt_model import sample_classes

    labels = torch.tensor([7, 2, 7])
    classes, target, correction = sample_classes(labels, 10, 4, generator=torch.Generator().manual_seed(0))
    assert classes[:2].tolist() == [2, 7] and len(set(classes.tolist())) == 4
    assert classes[target].tolist() == labels.tolist()
    # 2 of the 8 other classes drawn: inclusion probability 1/4, correction log 4; batch classes 0
    torch.testing.assert_close(correction, torch.tensor([0.0, 0.0, math.log(4), math.log(4)]))
    # unbiased partition function: E[sum_sampled exp(s) * exp(correction)] = sum_all exp(s)
    scores = torch.randn(10)
    gen = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(4000):
        classes, _, correction = sample_classes(labels, 10, 4, generator=gen)
        estimates.append((scores[classes] + correction).exp().sum())
    assert abs(torch.stack(estimates).mean() / scores.exp().sum() - 1) < 0.03


def test_zeroshot_residual_adds_the_class_text_score_to_the_pooled_logits(build_trainer_for):
    """Inference logits = pool_k(a cos(f, t[c, k])) + ZEROSHOT_WEIGHT * a * cos(f, b[c]), computed here from
    the model's own features; weight 0 gives the pooled sub-prompt scores alone."""
    from trainers.mixprompt_model import pool_scores

    opts = ["TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.INIT", "random"]
    for weight in (0.0, 0.5, 2.0):
        trainer = build_trainer_for("MixPrompt", config=MP,
                                    opts=opts + ["TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", str(weight)])
        model = trainer.model
        subprompts = model.text_features()  # (C, K, D)
        base = model.prompt_learner.base_features  # (C, D)
        generator = torch.Generator().manual_seed(1)
        image_features = torch.nn.functional.normalize(torch.randn(5, base.shape[1], generator=generator), dim=-1)
        with torch.no_grad():
            logits = model.logits(image_features, subprompts)  # (B, C)
        scale = trainer.cfg.TRAINER.MIXPROMPT.SIM_SCALE
        expected = (torch.logsumexp(scale * torch.einsum("bd,ckd->bck", image_features, subprompts), -1)
                    - math.log(3) + weight * scale * image_features @ base.t())
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
        if weight == 0.0:
            torch.testing.assert_close(logits, pool_scores(model.scores(image_features, subprompts), "lse"))


@pytest.mark.parametrize("class_sample", ["0", "2"])
def test_zeroshot_residual_enters_the_training_scores_of_the_scored_classes_only(build_trainer_for, monkeypatch,
                                                                                 class_sample):
    """In training the residual is added to every sub-prompt score of each scored class: the pooled class
    scores compute_loss returns move by w * a * cos(f, b[c]) of the scored classes c (all 4, or CLASS_SAMPLE 2),
    the loss changes, and the E-step targets (responsibilities within the image's own class) do not."""
    import trainers.mixprompt as mixprompt

    opts = ["TRAINER.MIXPROMPT.K", "3", "TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.BALANCE", "none",
            "TRAINER.MIXPROMPT.CLASS_SAMPLE", class_sample]
    gammas, original = [], mixprompt.mm.responsibilities
    monkeypatch.setattr(mixprompt.mm, "responsibilities", lambda *a: gammas.append(original(*a)) or gammas[-1])
    results = {}
    for weight in (0.0, 1.0):
        trainer = build_trainer_for("MixPrompt", config=MP, opts=opts + ["TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", str(weight)])
        batch = {key: value[:1] for key, value in _batch(trainer).items()}  # one image: 1 batch class + 1 drawn
        seen, text_features = [], trainer.model.text_features
        trainer.model.text_features = lambda classes=None: seen.append(classes) or text_features(classes)
        trainer.epoch, trainer.batch_idx = 0, 0
        trainer.before_epoch()
        torch.manual_seed(5)  # the same sampled classes for both weights
        loss, pooled, _ = trainer.compute_loss(batch)
        image_features, _ = trainer.batch_image_features(batch)
        results[weight] = (loss.detach(), pooled.detach(), seen[0], image_features, gammas[-1].detach())
    (loss0, pooled0, classes0, features, gamma0), (loss1, pooled1, classes1, _, gamma1) = results[0.0], results[1.0]
    assert torch.equal(classes0, classes1) and len(classes0) == (4 if class_sample == "0" else 2)
    scale = trainer.cfg.TRAINER.MIXPROMPT.SIM_SCALE
    expected = scale * features.float() @ trainer.model.zeroshot_features[classes0].t()  # (B, S)
    torch.testing.assert_close(pooled1 - pooled0, expected, rtol=1e-4, atol=1e-3)
    assert not torch.isclose(loss0, loss1)
    torch.testing.assert_close(gamma0, gamma1)


def test_zeroshot_residual_in_token_space_and_its_settings(build_trainer_for):
    """Token space encodes the class text features for the residual (TEMPLATES) when the weight is not 0; with
    weight 0 a TEMPLATES setting would be ignored and is refused; a negative weight is refused."""
    token = build_trainer_for("MixPrompt", config=MP, opts=TOKEN)  # the default weight 0.5
    features = torch.nn.functional.normalize(torch.randn(2, token.model.zeroshot_features.shape[1]), dim=-1)
    scale = token.cfg.TRAINER.MIXPROMPT.SIM_SCALE
    torch.testing.assert_close(token.model.zeroshot_residual(features),
                               0.5 * scale * features @ token.model.zeroshot_features.t())
    off = build_trainer_for("MixPrompt", config=MP, opts=TOKEN + ["TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", "0.0"])
    assert off.model.zeroshot_residual(features) is None and off.model.zeroshot_features is None
    with pytest.raises(ConfigError, match=r"TRAINER\.MIXPROMPT\.ZEROSHOT_WEIGHT: must be >= 0"):
        build_trainer_for("MixPrompt", config=MP, opts=["TRAINER.MIXPROMPT.ZEROSHOT_WEIGHT", "-0.5"])
