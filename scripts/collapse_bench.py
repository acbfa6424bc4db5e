#!/usr/bin/env python
"""Collapse benchmark: MixPrompt, its baselines and two oracles on classes made of known visual modes.

    python scripts/collapse_bench.py                       # defaults: K 8 32, seeds 1 2 3, all settings
    python scripts/collapse_bench.py --K 8 --seeds 1 --settings original fixed --json out.json
    python scripts/collapse_bench.py --backbone random     # the tiny random CLIP on SyntheticModes

Backbone: ``world`` (default) is the tiny CLIP pretrained on the generated world (SyntheticWorld images
with NUM_MODES hidden looks per class); ``random`` is the tiny seeded random CLIP on SyntheticModes
(``--separation`` and ``--imbalance`` apply there only). ``--weights`` names other weights.
Every trained setting goes through ``train.py``'s own run (same config merge, trainer, training loop and
diagnostics as a user's run). Runs land in ``--out/<setting>/k<K>/seed<S>``; finished runs are reused, so
an interrupted benchmark continues where it stopped (a finished run made with other settings stops it). The
feature-level rows (1-NN and the two oracles, which use the true modes) are computed from the frozen image
features the linear probe uses (test transform).
Printed per setting and K: accuracy, feature_cos, offset_cos, eff_k, top1_share, dead, the share of seeds
the collapse rule fires for, and mode recovery (NMI and purity of the arg-max sub-prompt assignments of the
training images against their true modes, per class then averaged; purity favours K > M splits, NMI does
not) as mean +- std over seeds.
"""
import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

from tabulate import tabulate  # noqa: E402

from trainers.mixprompt_diagnostics import mode_recovery  # noqa: E402
from trainers.runs import complete_settings, final_result, is_finished, read_record, result_settings  # noqa: E402

MP = "configs/trainers/MixPrompt/vit_b16.yaml"
ORIGINAL = "configs/trainers/MixPrompt/original.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"
COCOOP = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
LINEAR_PROBE = "configs/trainers/LinearProbeCLIP/vit_b16.yaml"
TIP = "configs/trainers/TipAdapter/vit_b16.yaml"
P = "TRAINER.MIXPROMPT."

# the fixed defaults' recipe before docs/mixprompt_recipe.md's changes, as opts on top of MP
PREV_RECIPE = [P + "TRAIN_FEATURES", "augmented", "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "OPTIM.WARMUP_EPOCH", "1",
               P + "MIXTURE_LOSS", "ce", P + "ZEROSHOT_WEIGHT", "0.0", P + "CLUSTERING", "kmeans",
               P + "SINKHORN_SHARES", "equal"]
# the defaults before 2026-12-03's clustered start: k-means directions, equal shares in the balanced E-step
KMEANS_EQUAL = [P + "CLUSTERING", "kmeans", P + "SINKHORN_SHARES", "equal"]
# in a setting's opts: the path of the (C, K, D) centroids of a FEATURES row (oracle_mode_split or
# oracle_mode_split_equal) for the run's K and data (written by ``write_start_centroids`` before the run)
ORACLE_CENTROIDS = "<oracle_mode_split centroids>"
ORACLE_EQUAL_CENTROIDS = "<oracle_mode_split_equal centroids>"
START_FILES = {ORACLE_CENTROIDS: "oracle_mode_split", ORACLE_EQUAL_CENTROIDS: "oracle_mode_split_equal"}  # -> row
# in the start file's name: a run records the path, not the content, so a change of how the start is computed
# must change the path (2: equal parts of exactly floor / ceil size)
START_VERSION = 2
# name -> (trainer, config file, extra opts, description); only MixPrompt settings depend on K. A trainer of
# FEATURES is no train.py run: the row is computed from the frozen image features (oracle_* rows use the true modes).
FEATURES = "features"
# FEATURES rows that depend on K (MixPrompt's, not the true M)
K_FEATURES = ("kmeans_k", "kmeans_k_balanced", "kmeans_k_balanced_em", "ward_k", "nmi_ceiling_balanced",
              "oracle_mode_split", "oracle_mode_split_balanced", "oracle_mode_split_equal")
SETTINGS = {
    "zeroshot": ("ZeroshotCLIP", COOP, [], "zero-shot CLIP (dataset template)"),
    "linear_probe": ("LinearProbeCLIP", LINEAR_PROBE, [], "linear probe (C on val; 3-fold CV without val)"),
    "1nn": (FEATURES, "", [], "1-nearest neighbour (cosine) among the training features"),
    "oracle_mode_means": (FEATURES, "", [], "ORACLE: nearest true (class, mode) mean of the training features "
                                            "(accuracy; NMI / purity of its assignment of the training images)"),
    "oracle_kmeans": (FEATURES, "", [], "ORACLE: per-class k-means (k = M) mode-recovery NMI / purity; accuracy of "
                                        "its centroids as prototypes (nearest centroid, cosine)"),
    "kmeans_k": (FEATURES, "", [], "per-class k-means with k = K: accuracy of its centroids as prototypes (no "
                                   "training), NMI / purity of its nearest-centroid split"),
    "kmeans_k_balanced": (FEATURES, "", [], "the same centroids, each given an equal share of the class's images "
                                            "(what a balanced E-step allows): NMI / purity"),
    "kmeans_k_balanced_em": (FEATURES, "", [], "the same centroids refined by hard EM with equal shares (an equal-share "
                                               "assignment, then each centroid at its part's normalised mean, until the "
                                               "parts stop changing): the balanced E-step's clustering alone, without "
                                               "text or training; NMI / purity of its nearest-centroid split, accuracy "
                                               "as prototypes"),
    "ward_k": (FEATURES, "", [], "per-class agglomerative clustering with Ward's criterion into K clusters (no true "
                                 "modes, free shares): NMI / purity of the nearest-centroid split of its cluster means, "
                                 "accuracy as prototypes"),
    "oracle_mode_split": (FEATURES, "", [], "ORACLE: K centroids placed inside the true modes (k-means on each "
                                            "mode's images, K / M per mode): NMI / purity of the nearest-centroid "
                                            "split, what K sub-prompts could recover (K >= M)"),
    "oracle_mode_split_balanced": (FEATURES, "", [], "ORACLE: the same centroids, each given an equal share of the "
                                                     "class's images: NMI / purity (K >= M)"),
    "oracle_mode_split_equal": (FEATURES, "", [], "ORACLE: each true mode's images cut into K / M equal parts (an "
                                                  "equal-share split inside the modes), a centroid at each part's "
                                                  "mean: NMI / purity of the nearest-centroid split (K >= M)"),
    "nmi_ceiling_balanced": (FEATURES, "", [], "BOUND: the highest NMI of any split that gives each of K sub-prompts "
                                               "an equal share of a class's images, 2 H(mode) / (H(mode) + H(split))"),
    "tip": ("TipAdapter", TIP, [], "Tip-Adapter, training-free (alpha, beta on val when there is one)"),
    "tip_f": ("TipAdapter", TIP, ["TRAINER.TIPADAPTER.FINETUNE", "True", "OPTIM.MAX_EPOCH", "20",
                                  "DATALOADER.TRAIN_X.BATCH_SIZE", "256"], "Tip-Adapter-F, its recipe (20 epochs, batch 256)"),
    "coop": ("CoOp", COOP, [], "CoOp (one prompt per class), the benchmark's budget"),
    "coop_ep200": ("CoOp", COOP, ["OPTIM.MAX_EPOCH", "200", "DATALOADER.TRAIN_X.BATCH_SIZE", "32"],
                   "CoOp, its own 16-shot recipe (200 epochs, batch 32)"),
    "cocoop": ("CoCoOp", COCOOP, ["OPTIM.MAX_EPOCH", "10", "DATALOADER.TRAIN_X.BATCH_SIZE", "1"],
               "CoCoOp, its own recipe (10 epochs, batch 1)"),
    "original": ("MixPrompt", ORIGINAL, [],
                 "original.yaml: today's objective with three of the earlier system's numbers (seed is that system)"),
    "fixed": ("MixPrompt", MP, [], "fixed defaults"),
    "orig+diversity": ("MixPrompt", ORIGINAL, [P + "DIVERSITY", "orthogonal", P + "DIVERSITY_WEIGHT", "1.0"],
                       "original + orthogonal diversity on final features"),
    "orig+balance": ("MixPrompt", ORIGINAL, [P + "BALANCE", "sinkhorn"], "original + Sinkhorn-balanced E-step"),
    "orig+entropy": ("MixPrompt", ORIGINAL, [P + "BALANCE", "marginal_entropy", P + "BALANCE_WEIGHT", "1.0"],
                     "original + marginal usage entropy (with gradient)"),
    "orig+tau": ("MixPrompt", ORIGINAL, [P + "TAU_END", "0.3"], "original + higher final tau (0.3)"),
    "orig+init_kmeans": ("MixPrompt", ORIGINAL, [P + "INIT", "kmeans", P + "CLUSTERING", "kmeans",
                                                 P + "OFFSET_INIT_SCALE", "0.3"],
                         "original + k-means initialisation"),
    "orig+init_templates": ("MixPrompt", ORIGINAL, [P + "INIT", "templates"], "original + template initialisation"),
    # the fixed defaults before the recipe change (docs/mixprompt_recipe.md): the M-step on augmented views, SGD
    # lr 0.002 with one constant warm-up epoch; and that recipe with one change at a time
    "fixed_prev": ("MixPrompt", MP, PREV_RECIPE, "the fixed defaults before the recipe change"),
    "fixed_prev+clean": ("MixPrompt", MP, [*PREV_RECIPE, P + "TRAIN_FEATURES", "clean"],
                         "previous fixed defaults, M-step on the clean (test-transform) features"),
    "fixed_prev+adam": ("MixPrompt", MP, [*PREV_RECIPE, "OPTIM.NAME", "adam", "OPTIM.LR", "0.01"],
                        "previous fixed defaults with Adam lr 0.01 (augmented views)"),
    "fixed+warmup": ("MixPrompt", MP, ["OPTIM.WARMUP_EPOCH", "1"], "fixed with one constant warm-up epoch (lr 1e-5)"),
    "fixed+sgd": ("MixPrompt", MP, ["OPTIM.NAME", "sgd", "OPTIM.LR", "0.002"], "fixed with SGD lr 0.002"),
    "oracle_init": ("MixPrompt", MP, [P + "INIT", "features", P + "INIT_FEATURES_FILE", ORACLE_CENTROIDS],
                    "ORACLE: the fixed defaults started with each sub-prompt at an oracle_mode_split centroid "
                    "(uses the true modes; K >= M)"),
    "oracle_init_equal": ("MixPrompt", MP, [P + "INIT", "features", P + "INIT_FEATURES_FILE", ORACLE_EQUAL_CENTROIDS],
                          "ORACLE: the fixed defaults started at the oracle_mode_split_equal centroids (an equal-share "
                          "split inside the true modes; K >= M)"),
    "fixed+ce": ("MixPrompt", MP, [P + "MIXTURE_LOSS", "ce"],
                 "fixed with the cross-entropy mixture loss alone (the fixed defaults until ce_pull)"),
    "fixed+pull": ("MixPrompt", MP, [P + "MIXTURE_LOSS", "pull"],
                   "fixed with the earlier system's pull-only mixture loss (screened, not adopted)"),
    "fixed+cluster_means": ("MixPrompt", MP, [P + "INIT", "cluster_means"],
                            "fixed started with each sub-prompt exactly at its Ward cluster's mean feature (INIT "
                            "cluster_means) instead of tilted from the class text feature toward it"),
    # leave-one-out from the fixed defaults (not run by default: --settings fixed-...)
    "fixed-balance": ("MixPrompt", MP, [P + "BALANCE", "none"], "fixed without the balanced E-step"),
    "fixed-diversity": ("MixPrompt", MP, [P + "DIVERSITY", "none"], "fixed without diversity"),
    "fixed-init_kmeans": ("MixPrompt", MP, [P + "INIT", "random"], "fixed with random init"),
    "fixed-tau": ("MixPrompt", MP, [P + "TAU_END", "0.05"], "fixed with the original final tau"),
    "fixed-zeroshot": ("MixPrompt", MP, [P + "ZEROSHOT_WEIGHT", "0.0"], "fixed without the zero-shot residual"),
    "fixed-ward": ("MixPrompt", MP, KMEANS_EQUAL, "fixed started from k-means with equal shares (CLUSTERING kmeans, "
                                                  "SINKHORN_SHARES equal: the fixed defaults until 2026-12-03, late)"),
    "fixed-cluster_shares": ("MixPrompt", MP, [P + "SINKHORN_SHARES", "equal"],
                             "fixed with equal shares in the balanced E-step instead of the start clusters' sizes"),
    # the earlier system (seed.yaml; docs/seed_analysis.md): its 2000 of 15,270 warm-up steps on Cars scaled to
    # 16 of this benchmark's 120, its per-coordinate init std 0.01 at D = 512 scaled to the tiny CLIP's D = 64
    # (0.0283: the same initial offset norm 0.23 and feature cosine 0.95)
    "seed": ("MixPrompt", "configs/trainers/MixPrompt/seed.yaml",
             [P + "WARMUP_STEPS", "16", P + "OFFSET_INIT_SCALE", "0.0283"], "the earlier system's objective and recipe"),
    "seed+init_small": ("MixPrompt", "configs/trainers/MixPrompt/seed.yaml", [P + "WARMUP_STEPS", "16"],
                        "seed, init std 0.01 at D = 64 (initial feature cosine 0.994)"),
    "seed+init_wide": ("MixPrompt", "configs/trainers/MixPrompt/seed.yaml",
                       [P + "WARMUP_STEPS", "16", P + "OFFSET_INIT_SCALE", "0.06"],
                       "seed, init std 0.06 (initial feature cosine 0.81)"),
    **{f"seed+{name}": ("MixPrompt", "configs/trainers/MixPrompt/seed.yaml",
                        [P + "WARMUP_STEPS", "16", P + "OFFSET_INIT_SCALE", "0.0283", *opts], f"seed + {what}")
       for name, opts, what in (
           ("diversity", [P + "DIVERSITY", "orthogonal", P + "DIVERSITY_WEIGHT", "1.0"], "orthogonal diversity"),
           ("entropy_detached", [P + "ENTROPY", "image_detached", P + "ENTROPY_WEIGHT", "1.0"],
            "per-image entropy of the detached responsibilities (the earlier system's later form)"),
           ("entropy", [P + "ENTROPY", "image", P + "ENTROPY_WEIGHT", "1.0"], "per-image entropy with gradient"),
           ("tau", [P + "TAU_END", "0.3"], "final tau 0.3"),
           ("balance", [P + "BALANCE", "sinkhorn"], "Sinkhorn-balanced E-step"))},
}
DEFAULT_SETTINGS = [name for name in SETTINGS
                    if not name.startswith(("fixed-", "fixed+", "fixed_prev+", "oracle_init"))]
# of the FEATURES rows in references.json: 2 added the mode-mean oracle's NMI / purity, 3 the mode-split oracles,
# 4 the accuracy of the k-means rows (nearest centroid), 5 oracle_mode_split_equal, 6 equal shares of exactly
# floor / ceil size (balanced_assignment), 7 kmeans_k_balanced_em, 8 ward_k
REFERENCES_VERSION = 8
METRICS = ("accuracy", "feature_cos", "offset_cos", "eff_k", "top1_share", "dead", "collapsed", "nmi", "purity")
ACCURACY = re.compile(r"\* accuracy: ([\d.]+)%")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--K", type=int, nargs="+", default=[8, 32], help="sub-prompts per class")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS),
                   help="default: all but the leave-one-out fixed-* settings")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--classes", type=int, default=6, help="C")
    p.add_argument("--modes", type=int, default=4, help="M, true modes per class")
    p.add_argument("--images-per-mode", type=int, default=8, help="training images per mode")
    p.add_argument("--test-per-mode", type=int, default=16,
                   help="test images per mode (default 16: 384 test images at C 6, M 4, one is 0.26 points; the "
                        "tables measured before 2026-12-03 used 4, whose 96 images moved whole rows by 2-3 points)")
    p.add_argument("--separation", type=float, default=1.0, help="mode separation in [0, 1] (random only)")
    p.add_argument("--imbalance", type=float, default=1.0, help="last/first mode size ratio in (0, 1] (random only)")
    p.add_argument("--backbone", choices=("world", "random"), default="world",
                   help="world: the tiny CLIP pretrained on the generated world, on SyntheticWorld images; "
                        "random: the tiny seeded random CLIP on SyntheticModes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--at-init", action="store_true",
                   help="evaluate the trained settings at their initialisation instead of training them (train.py "
                        "--eval-only without a model: the epoch-0 accuracy and diagnostics); use its own --out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--weights", default="", help="CLIP weights (default: world: weights/world_clip.pt if it exists, "
                   "else pretrained into --out; random: a tiny seeded CLIP made in --out)")
    p.add_argument("--out", default="output/collapse_bench", help="runs and generated data go here")
    p.add_argument("--json", default="", help="also write the table (and every run's numbers) to this file")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="extra KEY VALUE opts for every run")
    return p


def data_opts(args):
    if args.backbone == "world":
        w = "DATASET.SYNTHETIC_WORLD."
        return [w + "NUM_CLASSES", str(args.classes), w + "NUM_MODES", str(args.modes),
                w + "TRAIN_PER_CLASS", str(args.modes * args.images_per_mode),
                w + "TEST_PER_CLASS", str(args.modes * args.test_per_mode), w + "SEED", str(args.data_seed),
                "INPUT.SIZE", "(32, 32)"]
    s = "DATASET.SYNTHETIC."
    return [s + "NUM_CLASSES", str(args.classes), s + "NUM_MODES", str(args.modes),
            s + "IMAGES_PER_MODE", str(args.images_per_mode), s + "TEST_PER_MODE", str(args.test_per_mode),
            s + "MODE_SEPARATION", str(float(args.separation)), s + "IMBALANCE", str(float(args.imbalance)),
            s + "SEED", str(args.data_seed)]


def train_argv(args, setting, k, seed, out_dir, weights):
    trainer, config, extra, _ = SETTINGS[setting]
    extra = [start_centroids_path(args, k, START_FILES[opt]) if opt in START_FILES else opt for opt in extra]
    opts = ["MODEL.BACKBONE.NAME", weights, "OPTIM.MAX_EPOCH", str(args.epochs), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch_size), "DATALOADER.TEST.BATCH_SIZE", "100",
            "TRAIN.PRINT_FREQ", "1000", *data_opts(args), *extra, *args.opts]
    if trainer == "MixPrompt":
        opts += [P + "K", str(k)]
    return ["--root", os.path.join(args.out, "data"), "--trainer", trainer, "--seed", str(seed),
            "--dataset-config-file", str(REPO_ROOT / DATASET_CONFIG[args.backbone]),
            "--config-file", str(REPO_ROOT / config), "--output-dir", out_dir,
            *(["--eval-only"] if args.at_init else []), *opts]


DATASET_CONFIG = {"world": "configs/datasets/synthetic_world_modes.yaml",
                  "random": "configs/datasets/synthetic_modes.yaml"}


def run_one(argv):
    """train.py's run, in this process, with its console output kept to the run's log file."""
    from engine.utils import _Tee
    from trainers.cli import build_parser, run

    args = build_parser().parse_args(argv)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            run(args)
        finally:
            if isinstance(sys.stdout, _Tee):
                sys.stdout.close()


def stale_settings(out_dir, argv):
    """The result-changing settings in which the finished run in ``out_dir`` differs from the run ``argv``
    asks for today ({key: (recorded, now)}): a default changed since, or other opts. Empty when it can be
    reused, or when the folder has no record of its settings to compare (a run of CoOp's own code)."""
    from trainers.cli import build_parser as train_parser, setup_cfg
    from trainers.registry import get_trainer

    record = read_record(out_dir) or {}
    if "settings" not in record:
        return {}
    cfg = setup_cfg(train_parser().parse_args(argv))
    own = f"TRAINER.{get_trainer(cfg.TRAINER.NAME).cfg_node}."

    def read_by_this_trainer(key):  # another trainer's TRAINER.<NODE>.* keys cannot change this run
        return not key.startswith("TRAINER.") or key.startswith(own) or key.count(".") == 1

    recorded, planned = complete_settings(record["settings"], record.get("trainer")), result_settings(cfg)
    keys = sorted(k for k in set(recorded) | set(planned) if read_by_this_trainer(k))
    return {k: (recorded.get(k), planned.get(k)) for k in keys if recorded.get(k) != planned.get(k)}


def reusable(out_dir, argv):
    """True when ``out_dir`` holds a finished run of exactly ``argv``'s settings, False when it holds none;
    a finished run of other settings is an error (reusing it would put another method's figures in the
    table, and re-running over it would overwrite a result)."""
    if not is_finished(out_dir):
        return False
    differing = stale_settings(out_dir, argv)
    if differing:
        shown = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in list(differing.items())[:5])
        more = f" (and {len(differing) - 5} more)" if len(differing) > 5 else ""
        raise SystemExit(f'ERROR: "{out_dir}" holds a finished run with other settings than this benchmark asks for '
                         f"({shown}{more}). Remove that folder to re-run it, or choose another --out.")
    return True


def collect(out_dir, true_mode):
    result = {"accuracy": final_result(out_dir)}
    summary_path = os.path.join(out_dir, "diagnostics_summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        for key in ("feature_cos", "offset_cos", "eff_k", "top1_share", "dead"):
            result[key] = summary[key]
        result["collapsed"] = float(summary["collapsed"])
        result["nmi"], result["purity"] = mode_recovery(summary["assignments"], true_mode)
    return result


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def fmt(mean, std, digits):
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def resolve_weights(args):
    """The CLIP weights of the benchmark: --weights, else the backbone's default (made once, then reused)."""
    if args.weights:
        return args.weights
    if args.backbone == "world":
        from trainers.clip.pretrain import pretrain_tiny_clip, recipe_for

        weights = REPO_ROOT / "weights" / "world_clip.pt"
        if not weights.is_file():
            weights = Path(args.out) / "world_clip.pt"
            if not weights.is_file():
                print(f"Pretraining the tiny world CLIP into {weights} (full recipe, several minutes, once)")
                pretrain_tiny_clip(weights, recipe_for(quick=False))
        print(f"CLIP: the tiny CLIP pretrained on the generated world ({weights})")
        return str(weights)
    from trainers.clip import save_tiny_clip

    weights = os.path.join(args.out, "tiny_clip.pt")
    if not os.path.isfile(weights):
        save_tiny_clip(weights, seed=0, arch="vit")
    print(f"CLIP: tiny seeded random weights ({weights}); accuracies reflect the synthetic task only")
    return weights


def true_modes(args, cfg):
    """impath -> true mode of every image of the benchmark's dataset (generated by the first run)."""
    if args.backbone == "world":
        from datasets.synthetic_world import dataset_folder, mode_of

        return mode_of(dataset_folder(cfg))
    from datasets.synthetic_modes import mode_of, settings_name

    return mode_of(os.path.join(os.path.abspath(cfg.DATASET.ROOT), "synthetic_modes",
                                settings_name(cfg.DATASET.SYNTHETIC)))


def mode_means(train_x, train_y, train_mode):
    """ORACLE centroids {class: (M, D)}: the L2-normalised mean of each true (class, mode) of the training
    features (unit-norm features, so the nearest in distance is the nearest in cosine)."""
    import torch
    import torch.nn.functional as F

    means = {}
    for c in sorted(set(train_y.tolist())):
        points, truth = train_x[train_y == c], train_mode[train_y == c]
        means[c] = F.normalize(torch.stack([points[truth == m].mean(0) for m in sorted(set(truth.tolist()))]),
                               dim=-1)
    return means


def nearest_mode_mean_accuracy(train_x, train_y, train_mode, test_x, test_y):
    """ORACLE: test accuracy (%) of the nearest (cosine) true (class, mode) mean (``mode_means``); the
    predicted class is that of the nearest mean."""
    return nearest_centroid_accuracy(mode_means(train_x, train_y, train_mode), test_x, test_y)


def nearest_mode_mean_recovery(train_x, train_y, train_mode):
    """ORACLE: (NMI, purity) against the true modes of sending each training image to the nearest true mode
    mean of its own class (``split_recovery``): the modes that one sub-prompt at each true mode's mean would
    recover from these features (modes that overlap, or spread beyond one blob around their mean, keep it
    below 1)."""
    return split_recovery(train_x, train_y, train_mode, mode_means(train_x, train_y, train_mode))


def nearest_neighbour_accuracy(train_x, train_y, test_x, test_y):
    """Test accuracy (%) of the class of the nearest (cosine) training feature."""
    return (train_y[(test_x @ train_x.t()).argmax(dim=1)] == test_y).float().mean().item() * 100


def balanced_assignment(distances):
    """Cluster of each of N points (N,) given their distances to k centroids (N, k), each centroid taking
    floor(N / k) or ceil(N / k) points, with the smallest total squared distance (an exact assignment
    problem)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    n_points, n_clusters = distances.shape
    slots, required = -(-n_points // n_clusters), n_points // n_clusters
    cost = distances.pow(2).double().repeat_interleave(slots, dim=1)  # (N, k * slots): seat j of cluster j // slots
    # the first floor(N / k) seats of every cluster must be taken: a bonus larger than any total cost
    mandatory = torch.arange(n_clusters * slots) % slots < required  # (k * slots,)
    cost[:, mandatory] -= cost.max() * n_points + 1
    rows, seats = linear_sum_assignment(cost.numpy())
    assignment = torch.empty(n_points, dtype=torch.long)
    assignment[torch.as_tensor(rows)] = torch.as_tensor(seats) // slots
    return assignment


def class_kmeans(train_x, train_y, n_clusters, seed, restarts=10):
    """{class: centroids (k, D)}: per-class k-means with ``n_clusters`` (at most the class's images), the
    lowest-inertia of ``restarts`` k-means++ runs drawn from one generator seeded with ``seed``."""
    import torch

    from trainers.mixprompt_model import kmeans

    generator = torch.Generator().manual_seed(seed)
    return {c: kmeans(train_x[train_y == c], min(n_clusters, int((train_y == c).sum())), generator=generator,
                      restarts=restarts)
            for c in sorted(set(train_y.tolist()))}


def class_ward(train_x, train_y, n_clusters):
    """{class: cluster means (k, D)}: per-class agglomerative clustering with Ward's criterion into ``n_clusters``
    (at most the class's images; ``trainers.mixprompt_model.ward_clusters``, the clustering MixPrompt's default
    start is made from)."""
    from trainers.mixprompt_model import ward_means

    centroids = {}
    for c in sorted(set(train_y.tolist())):
        centroids[c] = ward_means(train_x[train_y == c], n_clusters)
    return centroids


def split_recovery(train_x, train_y, train_mode, centroids, balanced=False):
    """(NMI, purity) against the true modes of splitting each class's training images among its ``centroids``
    ({class: (k, D)}): each image at its nearest centroid, or, ``balanced``, under the constraint that every
    centroid takes an equal share of the class's images (``balanced_assignment``); per class, then averaged."""
    import torch

    from trainers.mixprompt_diagnostics import nmi, purity

    nmis, purities = [], []
    for c, class_centroids in centroids.items():
        points, truth = train_x[train_y == c], train_mode[train_y == c].tolist()
        distances = torch.cdist(points, class_centroids)  # (N_c, k)
        assignment = (balanced_assignment(distances) if balanced else distances.argmin(dim=1)).tolist()
        nmis.append(nmi(truth, assignment))
        purities.append(purity(truth, assignment))
    return sum(nmis) / len(nmis), sum(purities) / len(purities)


def balanced_hard_em(points, centroids, max_iters=100):
    """(k, D) unit centroids after hard EM with equal shares from ``centroids`` (k, D) on the unit-norm
    ``points`` (N, D): each round moves every centroid to the L2-normalised mean of its equal part
    (``equal_part_means``), until the centroids stop moving (at most ``max_iters`` rounds). The clustering a
    balanced E-step with hard responsibilities converges to, as sub-prompts that are unit directions scored by
    cosine."""
    import torch
    import torch.nn.functional as F

    centroids = F.normalize(centroids, dim=-1)
    for _ in range(max_iters):
        moved = F.normalize(equal_part_means(points, centroids), dim=-1)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids


def kmeans_mode_recovery(train_x, train_y, train_mode, n_clusters, seed, restarts=10, balanced=False):
    """(NMI, purity) against the true modes of per-class k-means with ``n_clusters`` (``class_kmeans``; the
    ORACLE when it is the true number of modes), by ``split_recovery``."""
    return split_recovery(train_x, train_y, train_mode, class_kmeans(train_x, train_y, n_clusters, seed, restarts),
                          balanced)


def nearest_centroid_accuracy(centroids, test_x, test_y):
    """Test accuracy (%) of the class of the nearest (cosine) centroid among every class's ``centroids``
    ({class: (k, D)}): a prototype classifier with k prototypes per class and no training."""
    import torch
    import torch.nn.functional as F

    classes = torch.cat([torch.full((len(v),), c) for c, v in centroids.items()])
    prototypes = F.normalize(torch.cat(list(centroids.values())), dim=-1)  # (sum k, D)
    return (classes[(test_x @ prototypes.t()).argmax(dim=1)] == test_y).float().mean().item() * 100


def centroids_per_mode(mode_sizes, n_sub):
    """How many of ``n_sub`` centroids each true mode of a class gets (``mode_sizes``: images per mode, in mode
    order): n_sub // M each, the remainder one each to the largest modes, at most one per image; slots a small
    mode cannot fill go, one at a time, to the mode with the most images to spare. Fewer than ``n_sub`` in all
    only when the class has fewer images. None when n_sub < M (no split of fewer sub-prompts than modes lies
    inside the modes)."""
    n_modes = len(mode_sizes)
    if n_sub < n_modes:
        return None
    counts = [n_sub // n_modes] * n_modes
    for m in sorted(range(n_modes), key=lambda m: (-mode_sizes[m], m))[:n_sub % n_modes]:
        counts[m] += 1
    counts = [min(count, size) for count, size in zip(counts, mode_sizes)]
    for _ in range(min(n_sub, sum(mode_sizes)) - sum(counts)):
        spare = max(range(n_modes), key=lambda m: (mode_sizes[m] - counts[m], -m))
        counts[spare] += 1
    return counts


def equal_part_means(points, centroids):
    """(k, D): the means of the k equal parts (sizes differing by at most one) that ``balanced_assignment``
    cuts ``points`` (N, D) into around ``centroids`` (k, D)."""
    import torch

    part = balanced_assignment(torch.cdist(points, centroids))  # (N,)
    return torch.stack([points[part == j].mean(dim=0) for j in range(len(centroids))])


def mode_split_centroids(train_x, train_y, train_mode, n_sub, seed, restarts=10, equal=False):
    """{class: centroids (<= n_sub, D)} put inside the true modes of each class: ``centroids_per_mode`` of them
    per mode, by k-means on that mode's images (the lowest-inertia of ``restarts`` seeded runs); ``equal``:
    each moved to the mean of its equal part of the mode (``equal_part_means``), so that the parts give every
    centroid an equal share when the mode sizes allow it. None when ``n_sub`` < M."""
    import torch

    from trainers.mixprompt_model import kmeans

    generator = torch.Generator().manual_seed(seed)
    centroids = {}
    for c in sorted(set(train_y.tolist())):
        points, truth = train_x[train_y == c], train_mode[train_y == c]
        modes = sorted(set(truth.tolist()))
        counts = centroids_per_mode([int((truth == m).sum()) for m in modes], n_sub)
        if counts is None:
            return None
        per_mode = []
        for m, n in zip(modes, counts):
            mode_points = points[truth == m]
            mode_centroids = kmeans(mode_points, n, generator=generator, restarts=restarts)  # (n, D)
            per_mode.append(equal_part_means(mode_points, mode_centroids) if equal else mode_centroids)
        centroids[c] = torch.cat(per_mode)
    return centroids


def mode_split_recovery(train_x, train_y, train_mode, n_sub, seed, restarts=10, balanced=False, equal=False):
    """ORACLE: (NMI, purity) against the true modes of the split into the ``mode_split_centroids``
    (``split_recovery``); (None, None) when ``n_sub`` < M. It tells what K sub-prompts could recover from
    these features if they knew the modes."""
    split = mode_split_centroids(train_x, train_y, train_mode, n_sub, seed, restarts, equal)
    return (None, None) if split is None else split_recovery(train_x, train_y, train_mode, split, balanced)


def balanced_nmi_ceiling(train_y, train_mode, n_sub):
    """The highest NMI against the true modes that an assignment giving each of ``n_sub`` sub-prompts an equal
    share of a class's images (sizes differing by at most one) can reach, per class then averaged. NMI =
    2 I / (H(mode) + H(split)) and I <= min(H(mode), H(split)); the bound is reached when the split refines
    the modes (K >= M) or the modes refine the split (K <= M), which equal mode sizes divisible by K allow."""
    from collections import Counter

    from trainers.mixprompt_diagnostics import entropy_of_counts

    ceilings = []
    for c in sorted(set(train_y.tolist())):
        truth = train_mode[train_y == c].tolist()
        n_groups = min(n_sub, len(truth))
        size, extra = divmod(len(truth), n_groups)
        h_mode = entropy_of_counts(Counter(truth).values())
        h_split = entropy_of_counts([size + 1] * extra + [size] * (n_groups - extra))
        ceilings.append(1.0 if h_mode + h_split == 0 else 2 * min(h_mode, h_split) / (h_mode + h_split))
    return sum(ceilings) / len(ceilings)


def setting_ks(setting, ks):
    """The K values a setting runs at: every asked K for MixPrompt settings and K_FEATURES rows, else [None]."""
    return ks if SETTINGS[setting][0] == "MixPrompt" or setting in K_FEATURES else [None]


def reference_key(setting, k):
    """The key of a FEATURES row in references.json (K_FEATURES rows: one per K)."""
    return setting if k is None else f"{setting}@K{k}"


def frozen_features(args, seed, weights, true_mode):
    """(train_x, train_y, train_mode, test_x, test_y): the frozen image features the linear probe uses (test
    transform, the seed's training split), their classes and the training images' true modes."""
    import torch

    from engine import build_trainer, set_random_seed
    from trainers.cli import build_parser as train_parser, setup_cfg

    out_dir = os.path.join(args.out, FEATURES, f"seed{seed}")
    cfg = setup_cfg(train_parser().parse_args(train_argv(args, "linear_probe", None, seed, out_dir, weights)))
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        set_random_seed(cfg.SEED)
        trainer = build_trainer(cfg)
        train_x, train_y = trainer.features("train")
        test_x, test_y = trainer.features("test")
    train_mode = torch.tensor([true_mode[item.impath] for item in trainer.dm.dataset.train_x])
    return train_x, train_y, train_mode, test_x, test_y


def data_fingerprint(args, weights):
    """12 hex digits naming the benchmark's data settings and the content of its CLIP weights: what is cached
    from the frozen features (references.json, the oracle_init start) is never reused for other ones."""
    digest = hashlib.sha256(json.dumps(data_opts(args)).encode())
    if os.path.isfile(weights):
        with open(weights, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    else:
        digest.update(str(weights).encode())
    return digest.hexdigest()[:12]


def start_centroids_path(args, k, row):
    """The start file of oracle_init (``row`` oracle_mode_split) or oracle_init_equal (oracle_mode_split_equal)
    for K: one per data set and weights (``args.fingerprint``) and ``START_VERSION``,
    the same for every seed (the seeds vary the training from it)."""
    name = f"{row}_v{START_VERSION}_K{k}_{args.fingerprint}.pt"
    return os.path.join(os.path.abspath(args.out), FEATURES, name)


def write_start_centroids(args, k, weights, true_mode, row):
    """Write (once) the (C, K, D) tensor of ``row``'s ``mode_split_centroids`` that oracle_init(_equal)
    starts from, k-means seeded with the data seed (the row itself, in references.json, with each run seed);
    only a class with fewer than K training images repeats its centroids."""
    import torch

    path = start_centroids_path(args, k, row)
    if os.path.isfile(path):
        return path
    train_x, train_y, train_mode, _, _ = frozen_features(args, args.seeds[0], weights, true_mode)
    split = mode_split_centroids(train_x, train_y, train_mode, k, args.data_seed,
                                 equal=row == "oracle_mode_split_equal")
    table = torch.stack([split[c][torch.arange(k) % len(split[c])] for c in sorted(split)])  # (C, K, D)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(table, path)
    return path


def feature_references(args, seed, weights, true_mode):
    """The FEATURES rows of one seed (K_FEATURES rows for every ``args.K``), from the frozen image features
    the linear probe uses (test transform, the seed's training split); cached in
    ``--out/features/seed<S>/references.json`` and recomputed when a row asked for is not there or the file
    was written by an older version of these rows (``REFERENCES_VERSION``) or for other data or weights
    (``data_fingerprint``)."""
    out_dir = os.path.join(args.out, FEATURES, f"seed{seed}")
    path = os.path.join(out_dir, "references.json")
    wanted = {reference_key(s, k) for s in SETTINGS if SETTINGS[s][0] == FEATURES for k in setting_ks(s, args.K)}
    cached = {}
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("version") != REFERENCES_VERSION or cached.get("fingerprint") != args.fingerprint:
            cached = {}  # rows computed differently then, or from other data or weights: recompute them all
        elif wanted <= set(cached):
            return cached, True
    train_x, train_y, train_mode, test_x, test_y = frozen_features(args, seed, weights, true_mode)
    oracle_centroids = class_kmeans(train_x, train_y, args.modes, seed)
    nmi_value, purity_value = split_recovery(train_x, train_y, train_mode, oracle_centroids)
    refs = {"1nn": {"accuracy": nearest_neighbour_accuracy(train_x, train_y, test_x, test_y)},
            "oracle_mode_means": {"accuracy": nearest_mode_mean_accuracy(train_x, train_y, train_mode, test_x,
                                                                          test_y),
                                  **dict(zip(("nmi", "purity"), nearest_mode_mean_recovery(train_x, train_y,
                                                                                           train_mode)))},
            "oracle_kmeans": {"accuracy": nearest_centroid_accuracy(oracle_centroids, test_x, test_y),
                              "nmi": nmi_value, "purity": purity_value}}
    for k in args.K:
        centroids = class_kmeans(train_x, train_y, k, seed)
        refs[reference_key("kmeans_k", k)] = {"accuracy": nearest_centroid_accuracy(centroids, test_x, test_y),
                                              **dict(zip(("nmi", "purity"), split_recovery(
                                                  train_x, train_y, train_mode, centroids)))}
        refs[reference_key("kmeans_k_balanced", k)] = dict(zip(("nmi", "purity"), split_recovery(
            train_x, train_y, train_mode, centroids, balanced=True)))
        refined = {c: balanced_hard_em(train_x[train_y == c], v) for c, v in centroids.items()}
        refs[reference_key("kmeans_k_balanced_em", k)] = {
            "accuracy": nearest_centroid_accuracy(refined, test_x, test_y),
            **dict(zip(("nmi", "purity"), split_recovery(train_x, train_y, train_mode, refined)))}
        ward = class_ward(train_x, train_y, k)
        refs[reference_key("ward_k", k)] = {"accuracy": nearest_centroid_accuracy(ward, test_x, test_y),
                                            **dict(zip(("nmi", "purity"), split_recovery(
                                                train_x, train_y, train_mode, ward)))}
        for setting in ("oracle_mode_split", "oracle_mode_split_balanced", "oracle_mode_split_equal"):
            recovered = mode_split_recovery(train_x, train_y, train_mode, k, seed,
                                            balanced=setting == "oracle_mode_split_balanced",
                                            equal=setting == "oracle_mode_split_equal")
            refs[reference_key(setting, k)] = dict(zip(("nmi", "purity"), recovered))
        refs[reference_key("nmi_ceiling_balanced", k)] = {"nmi": balanced_nmi_ceiling(train_y, train_mode, k)}
    # rows of other K from earlier calls are kept
    refs = {**cached, **refs, "version": REFERENCES_VERSION, "fingerprint": args.fingerprint}
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(refs, f, indent=1)
    return refs, False


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backbone == "world" and (args.separation != 1.0 or args.imbalance != 1.0):
        parser.error("--separation and --imbalance apply to --backbone random only")
    from trainers.cli import build_parser as train_parser, setup_cfg

    oracle_starts = [s for s in args.settings if s.startswith("oracle_init")]
    if oracle_starts and min(args.K) < args.modes:
        parser.error(f"{oracle_starts[0]} puts K / M sub-prompts inside each true mode: it needs K >= M (--modes "
                     f"{args.modes}), got K {min(args.K)}")
    os.makedirs(args.out, exist_ok=True)
    weights = resolve_weights(args)
    args.fingerprint = data_fingerprint(args, weights)
    plan = [(s, k) for s in args.settings for k in setting_ks(s, args.K)]
    n_runs = len(plan) * len(args.seeds)
    print(f"{n_runs} runs: settings {args.settings}, K {args.K}, seeds {args.seeds}, backbone {args.backbone}, "
          f"C {args.classes}, M {args.modes}, {args.images_per_mode} train images per mode, {args.epochs} epochs")
    runs = []
    started = time.time()
    true_mode = None
    references = {}

    def benchmark_true_modes(seed):
        argv_data = train_argv(args, "linear_probe", None, seed, os.path.join(args.out, FEATURES), weights)
        cfg = setup_cfg(train_parser().parse_args(argv_data))
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            from engine.data.manager import build_dataset  # generates the data when missing
            build_dataset(cfg)
        return true_modes(args, cfg)

    for i, ((setting, k), seed) in enumerate(((p, s) for p in plan for s in args.seeds), start=1):
        t0 = time.time()
        if SETTINGS[setting][0] == FEATURES:
            if true_mode is None:
                true_mode = benchmark_true_modes(seed)
            if seed not in references:
                references[seed] = feature_references(args, seed, weights, true_mode)
            result, reused = references[seed][0][reference_key(setting, k)], references[seed][1]
            out_dir = os.path.join(args.out, FEATURES, f"seed{seed}")
        else:
            out_dir = os.path.join(args.out, setting, f"k{k}" if k else "single", f"seed{seed}")
            for placeholder in START_FILES.keys() & set(SETTINGS[setting][2]):
                true_mode = true_mode or benchmark_true_modes(seed)
                write_start_centroids(args, k, weights, true_mode, START_FILES[placeholder])
            argv_run = train_argv(args, setting, k, seed, out_dir, weights)
            reused = reusable(out_dir, argv_run)
            if not reused:
                run_one(argv_run)
            if true_mode is None:
                true_mode = true_modes(args, setup_cfg(train_parser().parse_args(argv_run)))
            result = collect(out_dir, true_mode)
        runs.append({"setting": setting, "K": k, "seed": seed, "dir": out_dir, **result})
        acc = result.get("accuracy")
        print(f"[{i}/{n_runs}] {setting} K={k or '-'} seed={seed}: acc {'-' if acc is None else f'{acc:.1f}'}"
              + (f" eff_k {result['eff_k']:.2f}" if "eff_k" in result else "")
              + (f" nmi {result['nmi']:.2f}" if "nmi" in result else "")
              + (" (reused)" if reused else f" ({time.time() - t0:.0f}s)"), flush=True)

    rows, table = [], []
    for setting, k in plan:
        group = [r for r in runs if r["setting"] == setting and r["K"] == k]
        row = {"setting": setting, "K": k, "seeds": len(group)}
        for metric in METRICS:
            row[metric], row[metric + "_std"] = mean_std([r.get(metric) for r in group])
        rows.append(row)
        digits = {"accuracy": 1, "eff_k": 2, "dead": 1}
        table.append([setting, k or "-", len(group)] + [fmt(row[m], row[m + "_std"], digits.get(m, 3))
                                                        for m in METRICS])
    headers = ["setting", "K", "seeds", "accuracy", "feature_cos", "offset_cos", "eff_k", "top1_share", "dead",
               "collapsed", "NMI", "purity"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    print(f"collapsed = share of seeds where the collapse rule fires; M = {args.modes} true modes per class; "
          f"oracle_* rows use the true modes (ORACLES, not methods); nmi_ceiling_balanced is the highest NMI a split "
          f"with equal shares per sub-prompt can reach (a BOUND); wall time {time.time() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "table": rows, "runs": runs}, f, indent=1)
        print(f"Wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
