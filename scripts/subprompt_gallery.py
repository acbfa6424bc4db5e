#!/usr/bin/env python
"""What did each sub-prompt learn? Per-class image galleries of a trained MixPrompt run.

    python scripts/subprompt_gallery.py RUN_DIR [--classes NAME ...] [--class-index I ...]
        [--most-collapsed N] [--least-collapsed N] [--split train|test] [--top 8] [--out DIR]
        [--root DATA] [--load-epoch N] [--weights PATH]

For each chosen class, one PNG grid with one row per sub-prompt k of the class:
- left: k's usage share (the class's images whose arg-max score among the class's K sub-prompts is k;
  the arg-max responsibility of training, whatever tau) and its cosine to the other sub-prompts (max, with
  which, and mean); with known true modes (SyntheticModes) also the modes of the images it wins;
- middle: the ``--top`` images k wins, ranked by their score (the cosine to k is printed over each);
- right, spanning all rows: the K x K cosine similarity of the class's sub-prompt text features (row k of
  the heatmap is sub-prompt k's row of the grid).
A healthy class shows K rows of different-looking images with similar shares; a collapsed class shows one
row holding every image and K - 1 empty rows (dead sub-prompts), often over near-identical features.

Written to ``--out`` (default RUN_DIR/gallery): ``<label>_<class>.png`` per class, ``index.html`` (the
per-class numbers, with every grid) and ``gallery.json`` (the same numbers and each sub-prompt's ranked
images). The model is rebuilt from the run folder alone (``trainers/run_folder.py``): its config.yaml,
the checkpoint named by prompt_learner/checkpoint (``--load-epoch`` for another), the data root and
CLIP weights the config records (``--root`` / ``--weights`` when they moved).

Classes: by name, by index, the N most / least collapsed (ordered by eff_k, then feature_cos, from the
run's diagnostics.jsonl at the loaded epoch; computed on --split when the run has none), any combination;
by default all classes when there are at most 8, else 8 spread evenly from the most to the least collapsed.
"""
import argparse
import html
import io
import json
import math
import os
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_CLASSES = 8
THUMB_PX = 128


# ------------------------------------------------------------------------------------------ command line
def build_parser():
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=doc[0], epilog="\n\n".join(doc[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a MixPrompt run folder written by train.py")
    parser.add_argument("--classes", nargs="+", default=[], metavar="NAME", help="classes by name")
    parser.add_argument("--class-index", nargs="+", type=int, default=[], metavar="I", help="classes by label")
    parser.add_argument("--most-collapsed", type=int, default=0, metavar="N", help="the N most collapsed classes")
    parser.add_argument("--least-collapsed", type=int, default=0, metavar="N", help="the N least collapsed classes")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="images to assign: the run's (few-shot) training images, or the test split")
    parser.add_argument("--top", type=int, default=8, metavar="N", help="images shown per sub-prompt (default 8)")
    parser.add_argument("--pick", choices=("top", "spread"), default="top",
                        help="which of a sub-prompt's images to show: its N best-scoring (default), or N spread "
                             "evenly over its ranking, best to worst (shows the range of what it wins)")
    parser.add_argument("--dpi", type=int, default=72, help="resolution of the PNGs (default 72)")
    parser.add_argument("--out", help="output folder (default RUN_DIR/gallery)")
    parser.add_argument("--root", help="data root, when the data is no longer where the run's config says")
    parser.add_argument("--weights", help="CLIP weights, when they are no longer where the run's config says")
    parser.add_argument("--load-epoch", type=int, metavar="N", help="checkpoint epoch (default: the latest)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the model's construction messages")
    return parser


# ------------------------------------------------------------------------------------------ class choice
def diagnostics_order(run_dir, epoch):
    """Labels most collapsed first (eff_k ascending, then feature_cos descending) from the run's
    diagnostics.jsonl entry of ``epoch``, or None when there is none."""
    path = os.path.join(run_dir, "diagnostics.jsonl")
    if not os.path.isfile(path):
        return None
    entry = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("epoch") == epoch and (record.get("per_class") or {}).get("eff_k"):
                entry = record["per_class"]
    if entry is None:
        return None
    rows = zip(entry["labels"], entry["eff_k"], entry["feature_cos"])
    return [label for label, _, _ in sorted(rows, key=lambda r: (r[1], -r[2], r[0]))]


def stats_order(stats):
    """Labels most collapsed first from this tool's own per-class numbers."""
    return [s["label"] for s in sorted(stats, key=lambda s: (s["eff_k"], -s["feature_cos"], s["label"]))]


def spread(order, n):
    """n labels spread evenly over ``order`` (first and last included)."""
    if len(order) <= n:
        return list(order)
    return [order[round(i * (len(order) - 1) / (n - 1))] for i in range(n)] if n > 1 else [order[0]]


def wants_ranking(args, n_classes):
    explicit = args.classes or args.class_index
    return bool(args.most_collapsed or args.least_collapsed) or (not explicit and n_classes > DEFAULT_CLASSES)


def explicit_classes(args, classnames):
    """Labels chosen by --classes and --class-index, in the order given (checked before any heavy work)."""
    from trainers.run_folder import check_class_index, class_label

    return ([class_label(name, classnames) for name in args.classes]
            + [check_class_index(index, len(classnames)) for index in args.class_index])


def choose_classes(args, explicit, order, n_classes):
    """Chosen labels in the order asked, without repeats. ``order``: labels most collapsed first (None when
    no ranking was needed)."""
    chosen = list(explicit)
    if args.most_collapsed:
        chosen += order[:args.most_collapsed]
    if args.least_collapsed:
        chosen += order[::-1][:args.least_collapsed]
    if not chosen:
        chosen = spread(order, DEFAULT_CLASSES) if order is not None else list(range(n_classes))
    return list(dict.fromkeys(chosen))


# ------------------------------------------------------------------------------------------ assignments
def assign_images(trainer, items):
    """Each image's scores against its own class's sub-prompts. A dict: ``labels`` (N,), ``indices`` (N,)
    (positions in ``items``), ``own`` (N, K) scores, ``cos`` (N, K) cosines, ``subprompts`` (C, K, D)."""
    import torch

    from trainers.features import compute_image_features

    features, labels, indices = compute_image_features(trainer.model, items, trainer.cfg, trainer.device)
    with torch.no_grad():
        subprompts = trainer.model.text_features().float().cpu()  # (C, K, D), L2-normalised
        scores = trainer.model.scores(features.to(trainer.device), subprompts.to(trainer.device)).cpu()  # (N, C, K)
    own = scores[torch.arange(len(labels)), labels]  # (N, K)
    cos = torch.einsum("nd,nkd->nk", features, subprompts[labels])  # (N, K)
    return {"labels": labels, "indices": indices, "own": own, "cos": cos, "subprompts": subprompts}


def subprompt_row(j, own, cos, winner, sub_cos, image_of):
    """Sub-prompt j of a class: the images it wins, best score first, and its cosine to the others.
    ``own``, ``cos``: (n, K) for the class's n images; ``winner``: (n,); ``image_of(i)``: (impath, mode)."""
    won = (winner == j).nonzero().flatten()
    won = won[own[won, j].argsort(descending=True)]
    others = [(sub_cos[j][o], o) for o in range(len(sub_cos)) if o != j]
    best_cos, best = max(others) if others else (float("nan"), None)
    images = [dict(zip(("impath", "mode"), image_of(i)), cos=round(cos[i, j].item(), 4)) for i in won.tolist()]
    return {"subprompt": j, "count": len(images), "images": images, "max_cos_to_others": best_cos,
            "most_similar": best,
            "mean_cos_to_others": sum(c for c, _ in others) / len(others) if others else float("nan")}


def class_stats(assigned, label, items, modes, thresholds):
    """Per-class numbers and each sub-prompt's row (JSON-ready dict)."""
    import torch

    from trainers.mixprompt_diagnostics import class_statistics

    subprompts = assigned["subprompts"][label]  # (K, D)
    k = subprompts.shape[0]
    sub_cos = (subprompts @ subprompts.T).tolist()  # (K, K)
    mine = (assigned["labels"] == label).nonzero().flatten()  # (n,) rows of this class
    own, cos = assigned["own"][mine], assigned["cos"][mine]  # (n, K)
    winner = own.argmax(dim=1) if len(mine) else torch.zeros(0, dtype=torch.long)  # (n,)

    def image_of(i):
        impath = items[assigned["indices"][mine[i]].item()].impath
        return impath, (modes or {}).get(impath)

    rows = [subprompt_row(j, own, cos, winner, sub_cos, image_of) for j in range(k)]
    stats = class_statistics(subprompts, winner, *thresholds)  # the collapse statistics, as in training
    for row, value in zip(rows, stats["usage"]):
        row["share"] = value
    return {"label": label, "n_images": len(mine), **stats, "subprompt_cos": sub_cos, "subprompts": rows}


def known_modes(dataset):
    """impath -> true mode for datasets that record one (SyntheticModes), else None."""
    if type(dataset).__name__ != "SyntheticModes":
        return None
    from datasets.synthetic_modes import mode_of

    return mode_of(dataset.dataset_dir)


# ------------------------------------------------------------------------------------------ figures
def thumbnail(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_PX, THUMB_PX))
        return np.asarray(image)


def row_text(row, n_images, k):
    lines = [f"sub-prompt {row['subprompt'] + 1}",
             f"wins {row['count']}/{n_images} ({100 * row['share']:.0f}%)" if row["count"] else "wins no image (dead)"]
    if k > 1:
        lines.append(f"cos to others: max {row['max_cos_to_others']:.2f} (#{row['most_similar'] + 1}), "
                     f"mean {row['mean_cos_to_others']:.2f}")
    modes = [im["mode"] for im in row["images"] if im["mode"] is not None]
    if modes:
        counts = sorted({m: modes.count(m) for m in modes}.items(), key=lambda mc: -mc[1])
        lines.append("true modes: " + ", ".join(f"m{m} x{c}" for m, c in counts))
    return "\n".join(lines)


def pick_images(images, n, how):
    """``n`` of a sub-prompt's ranked images: the first n, or n spread evenly over the ranking."""
    if how == "top" or len(images) <= n:
        return images[:n]
    return [images[i] for i in spread(list(range(len(images))), n)]


def plot_class(plt, stats, name, top, pick, title_extra, path, dpi):
    """One row per sub-prompt: numbers, its top images, and the K x K similarity heatmap on the right."""
    import numpy as np
    from matplotlib.gridspec import GridSpec

    rows, k = stats["subprompts"], len(stats["subprompts"])
    heat_w = 0.9 + 0.3 * k
    fig = plt.figure(figsize=(3.2 + 1.0 * top + heat_w, 1.05 * k + 1.1))
    grid = GridSpec(k, top + 2, figure=fig, width_ratios=[3.2] + [1.0] * top + [heat_w],
                    left=0.01, right=0.97, bottom=0.04, top=1 - 0.75 / (1.05 * k + 1.1), wspace=0.08, hspace=0.35)
    for r, row in enumerate(rows):
        info = fig.add_subplot(grid[r, 0])
        info.axis("off")
        info.text(0, 0.5, row_text(row, stats["n_images"], k), fontsize=7.5, va="center", family="monospace",
                  color="firebrick" if row["count"] == 0 else "black")
        shown = pick_images(row["images"], top, pick)
        for c in range(top):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(shown):
                ax.axis("off")
                continue
            image = shown[c]
            pixels = thumbnail(image["impath"])
            ax.imshow(pixels, interpolation="nearest" if max(pixels.shape[:2]) < 64 else "antialiased")
            mode = f" m{image['mode']}" if image["mode"] is not None else ""
            ax.set_title(f"{image['cos']:.2f}{mode}", fontsize=7, pad=2)
    heat = fig.add_subplot(grid[:, -1])
    matrix = np.array(stats["subprompt_cos"])
    heat.imshow(matrix, vmin=min(0.0, float(matrix.min())), vmax=1.0, cmap="viridis", aspect="auto")
    ticks = list(range(k))
    heat.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
    heat.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
    heat.yaxis.tick_right()  # keeps the labels off the last image column
    heat.set_title("sub-prompt cosine", fontsize=8)
    if k <= 8:
        for i in range(k):
            for j in range(k):
                heat.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                          color="black" if matrix[i, j] > 0.6 else "white")
    flag = "  COLLAPSED" if stats["collapsed"] else ""
    order = "spread over its ranking" if pick == "spread" else "best first"
    fig.suptitle(f"{name} (class {stats['label']}): the images each of its K={k} sub-prompts wins{title_extra}\n"
                 f"{stats['n_images']} images; eff_k {stats['eff_k']:.2f} of {k}, top1_share "
                 f"{stats['top1_share']:.2f}, dead {stats['dead']}, feature_cos {stats['feature_cos']:.3f}{flag}; "
                 f"over each image: its cosine to the sub-prompt ({order})", fontsize=9)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def file_name(label, name):
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:60] or "class"
    return f"{label:04d}_{slug}.png"


# ------------------------------------------------------------------------------------------ index
def fmt(value, digits):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def index_html(meta, classes):
    e = html.escape
    head = ["class", "label", "images", "usage shares", "eff_k", "top1_share", "dead", "feature_cos", "collapsed"]
    rows = []
    for c in classes:
        usage = " ".join(f"{100 * u:.0f}%" for u in c["usage"])
        cells = [f'<a href="#c{c["label"]}">{e(c["name"])}</a>', c["label"], c["n_images"], usage,
                 fmt(c["eff_k"], 2), fmt(c["top1_share"], 2), c["dead"] if c["dead"] is not None else "-",
                 fmt(c["feature_cos"], 3), "yes" if c["collapsed"] else "no"]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    grids = [f'<h2 id="c{c["label"]}">{e(c["name"])} (class {c["label"]})</h2>\n'
             f'<a href="{e(c["png"])}"><img src="{e(c["png"])}" style="max-width:100%"></a>' for c in classes]
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>Sub-prompt gallery: {e(meta['run'])}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child{text-align:left}</style>",
        "</head><body>", f"<h1>What each sub-prompt learned: {e(meta['run'])}</h1>",
        f"<p>{e(meta['description'])}</p>",
        "<p>usage share: the class's images whose arg-max score among its K sub-prompts is that sub-prompt; "
        "eff_k = exp(entropy(usage)); top1_share = the largest share; dead = sub-prompts winning no image; "
        "feature_cos = mean pairwise cosine of the class's sub-prompt text features; collapsed: "
        f"{e(meta['rule'])}.</p>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>", *rows, "</table>", *grids,
        "</body></html>", ""])


def jsonable(value):
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ main
def load(args):
    """(trainer, labels chosen explicitly): the run's config, checkpoint and classes are checked before the
    model is built, so a wrong choice fails fast."""
    from trainers.run_folder import RunFolderError, checkpoint_path, load_classnames, load_run_config, load_trained

    cfg = load_run_config(args.run_dir, args.root)
    if cfg.TRAINER.NAME != "MixPrompt":
        raise RunFolderError(f'"{args.run_dir}" is a {cfg.TRAINER.NAME or "?"} run; the gallery needs a MixPrompt '
                             "run (sub-prompts)")
    checkpoint_path(args.run_dir, args.load_epoch)
    explicit = explicit_classes(args, load_classnames(args.run_dir, args.root))
    opts = ["MODEL.BACKBONE.NAME", args.weights] if args.weights else []
    trainer = load_trained(args.run_dir, root=args.root, epoch=args.load_epoch, opts=opts,
                           log=sys.stderr if args.verbose else io.StringIO())
    return trainer, explicit


def assign_chosen(args, trainer, explicit, items, thresholds):
    """(chosen labels, assignments, the items they index): only the chosen classes' images are encoded,
    unless a ranking has to be computed (no diagnostics for the loaded epoch)."""
    n_classes = len(trainer.dm.dataset.classnames)
    order = None
    if wants_ranking(args, n_classes):
        order = diagnostics_order(args.run_dir, trainer.loaded_epoch)
        if order is None:  # rank on the chosen split, all classes
            assigned = assign_images(trainer, items)
            present = sorted(set(assigned["labels"].tolist()))
            order = stats_order([class_stats(assigned, c, items, None, thresholds) for c in present])
            return choose_classes(args, explicit, order, n_classes), assigned, items
    chosen = choose_classes(args, explicit, order, n_classes)
    pool = [item for item in items if item.label in set(chosen)]
    return chosen, assign_images(trainer, pool), pool


def make_galleries(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    trainer, explicit = load(args)
    dataset = trainer.dm.dataset
    classnames = list(dataset.classnames)
    m = trainer.cfg.TRAINER.MIXPROMPT
    thresholds = (m.COLLAPSE_FEATURE_COS, m.COLLAPSE_TOP1_SHARE)
    items = list(dataset.train_x if args.split == "train" else dataset.test)
    chosen, assigned, pool = assign_chosen(args, trainer, explicit, items, thresholds)
    modes = known_modes(dataset)

    out = args.out or os.path.join(args.run_dir, "gallery")
    os.makedirs(out, exist_ok=True)
    random_weights = getattr(getattr(trainer, "clip_info", None), "random_weights", False)
    extra = f" ({args.split} images, epoch {trainer.loaded_epoch}{', RANDOM CLIP WEIGHTS' if random_weights else ''})"
    classes = []
    for label in tqdm(chosen, desc="galleries"):
        stats = class_stats(assigned, label, pool, modes, thresholds)
        stats.update(name=classnames[label], png=file_name(label, classnames[label]))
        plot_class(plt, stats, classnames[label], args.top, args.pick, extra, os.path.join(out, stats["png"]),
                   args.dpi)
        classes.append(stats)
    meta = {"run": os.path.abspath(args.run_dir), "epoch": trainer.loaded_epoch, "split": args.split,
            "K": m.K, "offset_space": m.OFFSET_SPACE, "scope": m.SCOPE, "random_weights": random_weights,
            "rule": f"feature_cos >= {thresholds[0]} or top1_share >= {thresholds[1]}",
            "description": f"checkpoint of epoch {trainer.loaded_epoch} ({trainer.checkpoint_file}), {args.split} "
                           f"images, K={m.K}, {m.OFFSET_SPACE} space, {m.SCOPE} scope"
                           + (", random CLIP weights (a test model)" if random_weights else "")}
    write_index(out, meta, classes)
    print_summary(classes, out)


def write_index(out, meta, classes):
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write(index_html(meta, classes))
    with open(os.path.join(out, "gallery.json"), "w") as f:
        json.dump(jsonable({**meta, "classes": classes}), f, indent=1)


def print_summary(classes, out):
    from tabulate import tabulate

    table = [[c["name"], c["label"], c["n_images"], " ".join(f"{100 * u:.0f}%" for u in c["usage"]),
              fmt(c["eff_k"], 2), fmt(c["top1_share"], 2), c["dead"], fmt(c["feature_cos"], 3),
              "yes" if c["collapsed"] else "no"] for c in classes]
    print(tabulate(table, headers=["class", "label", "images", "usage", "eff_k", "top1_share", "dead", "feature_cos",
                                   "collapsed"], tablefmt="github", disable_numparse=True))
    print(f"Wrote {len(classes)} class galleries and {os.path.join(out, 'index.html')}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.dpi < 10:
        print("ERROR: --top must be at least 1 and --dpi at least 10", file=sys.stderr)
        return 2
    from engine.errors import UserError

    try:
        make_galleries(args)
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
