"""Project config keys, added to the engine defaults before any YAML or command-line merge.

Every trainer knob lives under ``TRAINER.<NAME>.*`` with a default here; trainers validate their node once
at start-up (``check_cfg``) with messages that name the key.
"""
from yacs.config import CfgNode as CN

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
SUBSAMPLE_CHOICES = ("all", "base", "new")


def extend_cfg(cfg):
    """Add the project's keys to a default config (CoOp's ``extend_cfg``)."""
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (CoOp's base-to-new split)

    cfg.TRAINER.ZSCLIP = CN()
    cfg.TRAINER.ZSCLIP.PREC = "fp16"  # fp16 | fp32 (fp16 runs as fp32 on CPU)
    cfg.TRAINER.ZSCLIP.ENSEMBLE = False  # True: average the dataset template and IMAGENET_TEMPLATES_SELECT

    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialisation words, e.g. "a photo of a" (sets N_CTX)
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16 | fp32 | amp
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    add_feature_cache_config(cfg.TRAINER.COOP)

    add_mixprompt_config(cfg)
    add_cocoop_config(cfg)
    add_linear_probe_config(cfg)
    return cfg


def add_mixprompt_config(cfg):
    """TRAINER.MIXPROMPT, with the fixed defaults.

    Chosen with ``scripts/collapse_bench.py`` (docs/collapse_benchmark.md: 6 classes x 4 known modes,
    tiny CLIP, 10 epochs, seeds 1-3, mean +- std). Original settings: eff_k 1.00, NMI 0.00, accuracy
    59.7 +- 3.2 at K 8. Fixed defaults: eff_k 5.94 +- 0.28, NMI 0.77 +- 0.02, accuracy 70.1 +- 2.2 (K 8);
    eff_k 16.2, NMI 0.65, accuracy 71.2 +- 2.4 (K 32). Leave one out of the fixed defaults at K 8:
    - BALANCE sinkhorn is necessary: without it usage collapses (eff_k 1.27, NMI 0.18, accuracy 53.5);
      it is also the only single fix that un-collapses the original settings. The differentiable
      marginal_entropy alternative did not (eff_k 1.00): with a = 100 the responsibilities saturate and
      its gradient vanishes;
    - INIT kmeans: accuracy 70.1 vs 56.6 with random init, NMI 0.77 vs 0.71;
    - DIVERSITY orthogonal: no measurable effect on accuracy or NMI (70.2 / 0.76 without); lowers
      feature_cos slightly (0.885 vs 0.898); kept, it is free in feature space;
    - TAU_END 0.3 vs the original 0.05: no measurable difference (responsibilities are near one-hot at
      any tau with a = 100; 0.3 keeps the E-step targets softer).
    ``configs/trainers/MixPrompt/original.yaml`` keeps the earlier implementation's settings.
    """
    m = cfg.TRAINER.MIXPROMPT = CN()
    m.K = 8  # sub-prompts per class
    m.OFFSET_SPACE = "feature"  # feature: t = normalize(b[c] + delta); token: offsets on context embeddings
    m.SCOPE = "class"  # class: delta per (class, sub-prompt); shared: K offsets shared by all classes
    # token space (CoOp's context options)
    m.N_CTX = 4
    m.CTX_INIT = "a photo of a"  # sets N_CTX to its token count when non-empty
    m.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    m.ENCODE_CHUNK = 1024  # token space: encode the C*K prompts in chunks of this many rows (0 = all at once)
    m.ENCODE_CHECKPOINT = False  # token space: recompute each chunk's activations in backward (memory ~ chunk)
    # token space, large label spaces: classes per training step (the batch's classes plus uniformly sampled
    # others, with the sampled-softmax logit correction); 0 = all classes (exact). See docs/performance.md.
    m.CLASS_SAMPLE = 0
    # feature space: templates of the frozen base class feature b[c]
    m.TEMPLATES = "hierarchical"  # dataset | ensemble | hierarchical (class metadata; else ensemble)
    # EM temperature, annealed by iteration from TAU_START to TAU_END
    m.TAU_START = 1.0
    m.TAU_END = 0.3
    m.TAU_SCHEDULE = "cosine"  # cosine | linear | exponential
    m.SIM_SCALE = 100.0  # a in softmax_k(a * cos / tau) and in class scores (CLIP's logit scale is 100)
    m.LAMBDA_MIXTURE = 0.5  # loss = LAMBDA * mixture + (1 - LAMBDA) * class
    m.POOL = "lse"  # pooling of sub-prompt scores into class scores in training: max | lse | mean
    m.EVAL_POOL = ""  # pooling at inference ("" = POOL)
    m.OFFSET_REG_WEIGHT = 0.0001  # L2 on the raw offsets
    m.INIT = "kmeans"  # random | templates | kmeans (templates and kmeans: feature space only)
    m.OFFSET_INIT_SCALE = 0.3  # norm of an initial offset (relative to |b[c]| = 1 in feature space)
    m.DIVERSITY = "orthogonal"  # none | cosine | orthogonal: penalty on the final features t[c, :]
    m.DIVERSITY_WEIGHT = 1.0
    m.BALANCE = "sinkhorn"  # none | marginal_entropy | sinkhorn (balanced epoch-level E-step)
    m.BALANCE_WEIGHT = 0.1  # marginal_entropy only
    m.BALANCE_MOMENTUM = 0.9  # marginal_entropy only: running estimate of class-level usage
    m.SINKHORN_ITERS = 50  # sinkhorn only
    # diagnostics: a class is collapsed when its sub-prompts are one text feature (feature_cos at or above
    # COLLAPSE_FEATURE_COS) or one sub-prompt wins at least COLLAPSE_TOP1_SHARE of its images. Measured:
    # fixed-default classes with feature_cos 0.95-0.97 still split their images (eff_k ~3 of 4), so 0.95
    # alone would flag working sub-prompts; the original collapse showed top1_share ~0.99.
    m.COLLAPSE_FEATURE_COS = 0.98
    m.COLLAPSE_TOP1_SHARE = 0.9
    m.PREC = "fp16"  # fp16 | fp32 | amp | bf16 (learnable offsets stay fp32; CPU runs in fp32)
    add_feature_cache_config(m)
    return cfg


def add_feature_cache_config(node):
    """Image-feature cache keys of a trainer whose image encoder is frozen (trainers/feature_cache.py,
    docs/performance.md)."""
    node.FEATURE_CACHE_VIEWS = 0  # N > 0: encode N augmented views per training image once, draw one per epoch
    node.FEATURE_CACHE_EVAL = False  # encode test/val images (and MixPrompt's training images) once per run
    node.FEATURE_CACHE_DIR = ""  # a folder: save the cached features there, keyed, and reuse them across runs
    return node


def add_cocoop_config(cfg):
    """TRAINER.COCOOP: CoCoOp's keys and defaults, plus BATCH_CHUNK (this project's memory bound).

    BATCH_CHUNK: the per-image prompts (images x classes) are encoded in chunks of this many images; 0 picks
    as many images as keep a chunk at or under 4096 prompts (``trainers.cocoop.PROMPTS_PER_CHUNK``). It
    changes memory and speed only, not results. Lower it if evaluation or a training batch > 1 runs out of
    memory on a long class list.
    """
    c = cfg.TRAINER.COCOOP = CN()
    c.N_CTX = 16  # number of context vectors
    c.CTX_INIT = ""  # initialisation words, e.g. "a photo of a" (sets N_CTX); "" = N(0, 0.02)
    c.PREC = "fp16"  # fp16 | fp32 | amp (fp16 runs as fp32 on CPU)
    c.BATCH_CHUNK = 0  # images per chunk of per-image prompts (0 = automatic)
    return cfg


def add_linear_probe_config(cfg):
    """TRAINER.LINEAR_PROBE: the linear-probe baseline (trainers/linear_probe.py, docs/linear_probe.md).

    C (sklearn's convention: larger = weaker L2) is searched on a coarse log10 grid of COARSE_STEPS values
    from 10**C_MIN_LOG10 to 10**C_MAX_LOG10 (CoOp's 1e-6 .. 1e6 in powers of 100), then REFINE_STEPS
    bisection steps in log space around the best; FOLDS-fold cross-validation on train when val is empty.
    """
    lp = cfg.TRAINER.LINEAR_PROBE = CN()
    lp.C_MIN_LOG10 = -6.0
    lp.C_MAX_LOG10 = 6.0
    lp.COARSE_STEPS = 7  # grid values including both bounds
    lp.REFINE_STEPS = 8  # bisection steps (2 fits each)
    lp.MAX_ITER = 1000  # L-BFGS iterations per fit
    lp.FOLDS = 3  # cross-validation folds when the val split is empty
    lp.PREC = "fp16"  # fp16 | fp32 | amp: feature extraction only (fp16 runs as fp32 on CPU)
    return cfg
