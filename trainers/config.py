"""Project config keys, added to the engine defaults before any YAML or command-line merge.

Every trainer knob lives under ``TRAINER.<NAME>.*`` with a default here; trainers validate their node once
at start-up (``check_cfg``) with messages that name the key.
"""
from yacs.config import CfgNode as CN

PRECISIONS = ("fp16", "fp32", "amp")
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

    add_mixprompt_config(cfg)
    return cfg


def add_mixprompt_config(cfg):
    """TRAINER.MIXPROMPT: defaults are the fixed settings (see configs/trainers/MixPrompt/*.yaml for the
    measured choices and ``original.yaml`` for the earlier implementation that collapsed)."""
    m = cfg.TRAINER.MIXPROMPT = CN()
    m.K = 8  # sub-prompts per class
    m.OFFSET_SPACE = "feature"  # feature: t = normalize(b[c] + delta); token: offsets on context embeddings
    m.SCOPE = "class"  # class: delta per (class, sub-prompt); shared: K offsets shared by all classes
    # token space (CoOp's context options)
    m.N_CTX = 4
    m.CTX_INIT = "a photo of a"
    m.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    m.ENCODE_CHUNK = 0  # token space: encode C*K prompts in chunks of this many rows (0 = all at once)
    # feature space: templates of the frozen base class feature b[c]
    m.TEMPLATES = "hierarchical"  # dataset | ensemble | hierarchical (class metadata, else ensemble)
    # EM temperature, annealed by iteration
    m.TAU_START = 1.0
    m.TAU_END = 0.3
    m.TAU_SCHEDULE = "cosine"  # cosine | linear | exponential
    m.SIM_SCALE = 100.0  # a in softmax_k(a * cos / tau) and in class scores (CLIP's logit scale is 100)
    m.LAMBDA_MIXTURE = 0.5  # loss = LAMBDA * mixture + (1 - LAMBDA) * class
    m.POOL = "lse"  # class pooling over sub-prompts in training: max | lse | mean
    m.EVAL_POOL = ""  # pooling at inference ("" = POOL)
    m.OFFSET_REG_WEIGHT = 0.0001  # L2 on raw offsets
    m.INIT = "kmeans"  # random | templates (feature space) | kmeans (feature space)
    m.OFFSET_INIT_SCALE = 0.3  # expected norm of an initial offset (relative to |b[c]| = 1 in feature space)
    m.DIVERSITY = "orthogonal"  # none | cosine | orthogonal, on the final features t[c, :]
    m.DIVERSITY_WEIGHT = 0.1
    m.BALANCE = "sinkhorn"  # none | marginal_entropy | sinkhorn (balanced epoch-level E-step)
    m.BALANCE_WEIGHT = 0.1  # marginal_entropy only
    m.BALANCE_MOMENTUM = 0.9  # marginal_entropy: running estimate of class-level usage
    m.SINKHORN_ITERS = 50
    m.COLLAPSE_FEATURE_COS = 0.95  # diagnostics: a class is collapsed at or above this feature cosine ...
    m.COLLAPSE_TOP1_SHARE = 0.9  # ... or when one sub-prompt wins at least this share of its images
    m.PREC = "fp16"  # fp16 | fp32 | amp (learnable offsets stay fp32)
    return cfg
