#!/usr/bin/env python
"""Collapse table of the MixPrompt runs under a folder, and optional PNG figures.

    python scripts/collapse_report.py ROOT [ROOT ...] [--format markdown|csv|json] [--plot DIR]
                                      [--heatmap-classes 12]

A run is a folder holding ``diagnostics.jsonl`` (one JSON object per epoch, written by the MixPrompt
trainer). The table has one row per run, from its last epoch: run (path under ROOT), dataset, K, epoch,
offset_cos, feature_cos, eff_k, top1_share, dead and collapsed (with the number of collapsed classes; the
rule is printed under the table and defined in ``trainers/mixprompt_diagnostics.py``). Runs that measured
movement add why: initial_cos (the features' pairwise cosine at initialisation), moved_won and moved_lost
(mean 1 - cos(t, t0) of the sub-prompts that win at least one training image / none). Dataset and K come
from the run's record or config.yaml (``trainers/run_index.py``, as for ``parse_results.py``).

``--plot DIR`` writes, per run (file names = the run path with ``/`` -> ``__``):
- ``<run>_diagnostics.png``: every diagnostic over the epochs, with the collapse thresholds;
- ``<run>_subprompt_cos.png``: per class, the K x K cosine similarity of its sub-prompt text features
  (up to ``--heatmap-classes`` classes, evenly spread from the most to the least similar);
- ``<run>_usage.png``: usage histogram: the share of a class's training images that each sub-prompt
  wins, over all (class, sub-prompt) pairs, and the k-th most used sub-prompt's share;
and ``overview.png``: eff_k, feature_cos and top1_share over epochs for all runs.

The heatmap needs the sub-prompt features. They are read from ``diagnostics_summary.json``
(``per_class.subprompt_cos``) when the trainer saved them; otherwise the model is rebuilt from the run's
config.yaml and last checkpoint (this needs the dataset and CLIP weights at the paths the run used,
relative paths being taken from the current folder); when neither works the heatmap is skipped with a note.
"""
import argparse
import io
import json
import math
import os
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainers import run_index  # noqa: E402
from trainers.mixprompt_diagnostics import DEFAULT_COLLAPSE_FEATURE_COS, DEFAULT_COLLAPSE_TOP1_SHARE  # noqa: E402

DIAGNOSTICS_FILE = "diagnostics.jsonl"
SUMMARY_FILE = "diagnostics_summary.json"
METRICS = ("offset_cos", "feature_cos", "eff_k", "top1_share", "dead")
HEADERS = ["run", "dataset", "K", "epoch", *METRICS, "collapsed"]
#: movement diagnostics (runs since they were added): key in diagnostics.jsonl -> column
WHY = {"initial_feature_cos": "initial_cos", "moved_winners": "moved_won", "moved_losers": "moved_lost"}
DEFAULT_THRESHOLDS = {"feature_cos": DEFAULT_COLLAPSE_FEATURE_COS, "top1_share": DEFAULT_COLLAPSE_TOP1_SHARE}


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------ runs
def find_diagnostic_runs(roots):
    runs = []
    for root in roots:
        root = os.path.abspath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if DIAGNOSTICS_FILE in filenames:
                runs.append((dirpath, root))
                dirnames[:] = []
    return runs


def read_jsonl(path):
    epochs = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    epochs.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: keep the complete ones
                    print(f"Note: {path} line {number} is not complete JSON; ignored", file=sys.stderr)
    return epochs


def load_diagnostic_run(run_dir, root):
    epochs = read_jsonl(os.path.join(run_dir, DIAGNOSTICS_FILE))
    if not epochs:
        return None
    summary = None
    summary_path = os.path.join(run_dir, SUMMARY_FILE)
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    if run_index.log_files(run_dir) or os.path.isfile(os.path.join(run_dir, run_index.RESULT_FILE)):
        meta = run_index.load_run(run_dir, root)
    else:  # diagnostics without a log: what CoOp's path layout says
        rel = os.path.relpath(run_dir, root)
        path_meta = run_index.infer_from_path([] if rel == "." else list(Path(rel).parts))
        dataset = path_meta.get("dataset", "?")
        meta = {"run": rel, "dataset": run_index.DATASET_NAMES.get(dataset, dataset),
                "config": path_meta.get("config", "?"), "seed": path_meta.get("seed"), "settings": None}
    settings = meta.get("settings") or {}
    last = epochs[-1]
    max_epoch = settings.get("OPTIM.MAX_EPOCH")
    thresholds = {
        "feature_cos": settings.get("TRAINER.MIXPROMPT.COLLAPSE_FEATURE_COS", DEFAULT_THRESHOLDS["feature_cos"]),
        "top1_share": settings.get("TRAINER.MIXPROMPT.COLLAPSE_TOP1_SHARE", DEFAULT_THRESHOLDS["top1_share"]),
    }
    run = meta["run"] if meta["run"] != "." else os.path.basename(run_dir)
    return {"dir": run_dir, "run": run, "dataset": meta["dataset"], "config": meta["config"],
            "seed": meta["seed"], "K": last.get("K"), "epochs": epochs, "last": last, "summary": summary,
            "max_epoch": max_epoch, "thresholds": thresholds}


def collapsed_classes(diag):
    n = diag.get("num_classes") or 0
    frac = diag.get("collapsed_frac")
    if not n or frac is None or (isinstance(frac, float) and math.isnan(frac)):
        return None, n
    return int(round(frac * n)), n


# ------------------------------------------------------------------------------------------ table
def why_keys(runs):
    """The movement diagnostics to show: all of them when any run has them, else none (older runs)."""
    return list(WHY) if any("initial_feature_cos" in r["last"] for r in runs) else []


def table_rows(runs, digits=4):
    rows, why = [], why_keys(runs)
    for r in runs:
        d = r["last"]
        count, n = collapsed_classes(d)
        epoch = f"{d.get('epoch', '?')}/{r['max_epoch']}" if r["max_epoch"] else str(d.get("epoch", "?"))
        flag = "yes" if d.get("collapsed") else "no"
        if count is not None:
            flag += f" ({count}/{n} classes)"
        rows.append([r["run"], r["dataset"], d.get("K"), epoch,
                     *[fmt(d.get(m), 2 if m == "dead" else (3 if m == "eff_k" or m == "top1_share" else digits))
                       for m in METRICS], flag, *[fmt(d.get(m), digits) for m in why]])
    return rows


def render(runs, fmt_name):
    if fmt_name == "json":
        out = []
        for r in runs:
            d = r["last"]
            count, n = collapsed_classes(d)
            out.append({"run": r["run"], "dir": r["dir"], "dataset": r["dataset"], "config": r["config"],
                        "seed": r["seed"], "K": d.get("K"), "epoch": d.get("epoch"), "max_epoch": r["max_epoch"],
                        **{m: d.get(m) for m in METRICS}, "collapsed": bool(d.get("collapsed")),
                        "collapsed_classes": count, "num_classes": n, "rule": d.get("rule"),
                        **{m: d[m] for m in WHY if m in d}})
        return json.dumps(out, indent=2)
    if fmt_name == "csv":
        import csv
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*HEADERS[:-1], "collapsed", "collapsed_classes", "num_classes"])
        for r in runs:
            d = r["last"]
            count, n = collapsed_classes(d)
            writer.writerow([r["run"], r["dataset"], d.get("K"), d.get("epoch"),
                             *[d.get(m) for m in METRICS], bool(d.get("collapsed")), count, n])
        return buf.getvalue().rstrip("\n")
    from tabulate import tabulate

    rules = sorted({r["last"].get("rule") for r in runs if r["last"].get("rule")})
    why = why_keys(runs)
    text = ["Sub-prompt collapse at the last logged epoch (training images; means over classes).",
            tabulate(table_rows(runs), headers=HEADERS + [WHY[m] for m in why], tablefmt="github",
                     disable_numparse=True, colalign=["left", "left"] + ["right"] * 7 + ["left"] + ["right"] * len(why))]
    text += [f"collapsed: {rule}" for rule in rules]
    if why:
        text.append("initial_cos: pairwise cosine of the sub-prompt features at initialisation; moved_won / "
                    "moved_lost: mean 1 - cos(feature, initial feature) of sub-prompts that win >= 1 / no image")
    return "\n".join(text)


# ------------------------------------------------------------------------------------------ sub-prompt features
def rebuild_subprompt_cos(run_dir):
    """(cos (C, K, K) as nested lists, class names, epoch) by rebuilding the model from the run's config and
    loading its last checkpoint (``trainers/run_folder.py``). Raises with a readable message when that is
    impossible."""
    import torch

    from trainers.run_folder import load_trained

    console = io.StringIO()
    try:
        trainer = load_trained(run_dir, log=console)
        with torch.no_grad():
            features = trainer.model.text_features().float()  # (C, K, D), L2-normalised
            cos = features @ features.transpose(1, 2)  # (C, K, K)
    except BaseException as exc:  # noqa: B902 - also SystemExit from a user error
        lines = [ln for ln in console.getvalue().splitlines() if ln.startswith("ERROR")]
        raise RuntimeError(f"{type(exc).__name__}: {exc}" + (f" ({lines[-1]})" if lines else "")) from None
    return cos.tolist(), list(trainer.dm.dataset.classnames), trainer.loaded_epoch


def subprompt_cos(run):
    """(matrices by label, class names or None, where they come from) or (None, None, why not)."""
    per_class = (run["summary"] or {}).get("per_class") or {}
    if per_class.get("subprompt_cos"):
        labels = per_class.get("labels") or list(range(len(per_class["subprompt_cos"])))
        names = (run["summary"] or {}).get("classnames")
        return dict(zip(labels, per_class["subprompt_cos"])), names, "end of training"
    try:
        cos, names, epoch = rebuild_subprompt_cos(run["dir"])
    except Exception as exc:
        return None, None, str(exc)
    return dict(enumerate(cos)), names, f"rebuilt from the checkpoint of epoch {epoch}"


# ------------------------------------------------------------------------------------------ plots
def slug(run):
    return run.replace(os.sep, "__").replace("/", "__").strip("_") or "run"


def mean_offdiag(matrix):
    k = len(matrix)
    if k < 2:
        return 1.0
    return sum(matrix[i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))


def plot_diagnostics(plt, run, path):
    from matplotlib.ticker import MaxNLocator

    epochs = run["epochs"]
    x = [d.get("epoch", i + 1) for i, d in enumerate(epochs)]
    k = run["K"] or 1
    panels = [
        ("offset_cos", "offset_cos: mean pairwise cos of raw offsets", None),
        ("feature_cos", "feature_cos: mean pairwise cos of sub-prompt features", run["thresholds"]["feature_cos"]),
        ("eff_k", f"eff_k: effective sub-prompts in use (of K={k})", None),
        ("top1_share", "top1_share: usage of the most used sub-prompt", run["thresholds"]["top1_share"]),
        ("dead", "dead: sub-prompts winning no image", None),
        ("collapsed_frac", "collapsed_frac: share of collapsed classes", 0.5),
        ("tau", "tau: EM temperature", None),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, (key, title, threshold) in zip(axes.flat, panels):
        y = [d.get(key) for d in epochs]
        ax.plot(x, [v if v is not None else float("nan") for v in y], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if threshold is not None:
            ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"collapse threshold {threshold}")
            ax.legend(fontsize=7, loc="best")
        if key == "eff_k":
            ax.axhline(k, color="green", linestyle=":", linewidth=1, label=f"K = {k} (all used)")
            ax.axhline(1, color="red", linestyle="--", linewidth=1, label="1 (one sub-prompt)")
            ax.set_ylim(0.8, k + 0.2)
            ax.legend(fontsize=7, loc="best")
        if key == "top1_share":
            ax.axhline(1 / k, color="green", linestyle=":", linewidth=1, label=f"1/K = {1 / k:.2f} (balanced)")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, loc="best")
        if key == "dead":
            ax.set_ylim(-0.1, max(k - 1, 1) + 0.1)
        if key == "collapsed_frac":
            ax.set_ylim(-0.05, 1.05)
    axes.flat[-1].axis("off")
    last = run["last"]
    axes.flat[-1].text(0, 0.5, "last epoch:\n" + "\n".join(
        f"{m} = {fmt(last.get(m), 3)}" for m in METRICS) + f"\ncollapsed = {bool(last.get('collapsed'))}",
        fontsize=10, va="center", family="monospace")
    fig.suptitle(f"Collapse diagnostics over epochs: {run['run']} (K={k}, training images)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pick_classes(matrices, n):
    ordered = sorted(matrices, key=lambda label: -mean_offdiag(matrices[label]))
    if len(ordered) <= n:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [ordered[i] for i in picks]


def plot_heatmap(plt, run, path, matrices, names, source, n_classes):
    import numpy as np

    labels = pick_classes(matrices, n_classes)
    k = len(matrices[labels[0]])
    ncols = min(4, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    values = np.array([matrices[label] for label in labels], dtype=float)
    vmin = min(0.0, float(values.min()))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1.4, 3.4 * nrows + 1.2), squeeze=False,
                             layout="constrained")
    image = None
    for ax, label, matrix in zip(axes.flat, labels, values):
        image = ax.imshow(matrix, vmin=vmin, vmax=1.0, cmap="viridis")
        name = names[label] if names and label < len(names) else f"class {label}"
        name = name if len(name) <= 28 else name[:27] + "…"
        ax.set_title(f"{name}\nmean off-diagonal cos {mean_offdiag(matrix.tolist()):.3f}", fontsize=8)
        ticks = list(range(k))
        ax.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
        ax.set_xlabel("sub-prompt", fontsize=7)
        if k <= 8:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6 if k > 5 else 7,
                            color="black" if matrix[i, j] > vmin + 0.6 * (1 - vmin) else "white")
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity")
    shown = f"{len(labels)} of {len(matrices)} classes, most to least similar" if len(labels) < len(matrices) \
        else f"all {len(matrices)} classes, most to least similar"
    fig.suptitle(f"Per-class sub-prompt similarity heatmap (cos of the K={k} sub-prompt text features): "
                 f"{run['run']}\n{shown}; {source}", fontsize=10)
    fig.savefig(path, dpi=80, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def usage_source(run):
    summary = run["summary"] or {}
    if (summary.get("per_class") or {}).get("usage_hard"):
        return summary["per_class"]["usage_hard"], "end of training"
    per_class = run["last"].get("per_class") or {}
    return per_class.get("usage_hard"), f"epoch {run['last'].get('epoch', '?')}"


def plot_usage(plt, run, path):
    import numpy as np

    usage, when = usage_source(run)
    if not usage:
        return False
    from matplotlib.ticker import MaxNLocator

    usage = np.array(usage, dtype=float)  # (classes, K)
    k = usage.shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    left.hist(usage.ravel(), bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    left.axvline(1 / k, color="green", linestyle="--", label=f"balanced: 1/K = {1 / k:.2f}")
    left.set_xlabel("share of the class's training images the sub-prompt wins (arg-max responsibility)", fontsize=8)
    left.set_ylabel("(class, sub-prompt) pairs")
    left.set_title(f"Usage histogram over {usage.shape[0]} classes x {k} sub-prompts", fontsize=10)
    left.legend(fontsize=8)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    ranked = -np.sort(-usage, axis=1)  # each class's shares, most used first
    mean = ranked.mean(axis=0)
    right.bar(range(1, k + 1), mean, yerr=[mean - ranked.min(axis=0), ranked.max(axis=0) - mean], capsize=3,
              color="tab:orange")
    right.axhline(1 / k, color="green", linestyle="--", label=f"balanced: 1/K = {1 / k:.2f}")
    right.set_xticks(range(1, k + 1))
    right.set_ylim(0, 1.05)
    right.set_xlabel("sub-prompt rank within its class (1 = most used)")
    right.set_ylabel("share of the class's images (mean, min-max)")
    right.set_title("Usage by rank", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle(f"Sub-prompt usage histogram (training images, {when}): {run['run']}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def plot_overview(plt, runs, path):
    """One colour per experiment (dataset, config, K), one line style per seed."""
    from matplotlib.ticker import MaxNLocator

    experiments = sorted({(r["dataset"], r["config"], r["K"] or 0) for r in runs}, key=str)
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, key in zip(axes, ("eff_k", "feature_cos", "top1_share")):
        seen = {}
        for run in runs:
            exp = experiments.index((run["dataset"], run["config"], run["K"] or 0))
            n = seen[exp] = seen.get(exp, -1) + 1
            x = [d.get("epoch", i + 1) for i, d in enumerate(run["epochs"])]
            label = f"{run['config']} K={run['K']}" + (f" seed {run['seed']}" if run["seed"] is not None else "")
            if len({r["dataset"] for r in runs}) > 1:
                label = f"{run['dataset']} {label}"
            ax.plot(x, [d.get(key, float("nan")) for d in run["epochs"]], marker="o", markersize=2.5,
                    color=colours(exp % 10), linestyle=styles[n % len(styles)], label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ks = sorted({run["K"] for run in runs if run["K"]})
    axes[0].axhline(1, color="red", linestyle="--", linewidth=1)
    axes[1].axhline(runs[0]["thresholds"]["feature_cos"], color="red", linestyle="--", linewidth=1)
    axes[2].axhline(runs[0]["thresholds"]["top1_share"], color="red", linestyle="--", linewidth=1)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(4, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(f"Collapse diagnostics over epochs, all {len(runs)} runs (K = {', '.join(map(str, ks))}; "
                 "red dashes: eff_k 1 and the collapse thresholds)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / ncol), 1, 0.94))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_plots(runs, out_dir, n_classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written, notes = [], []
    for run in runs:
        base = os.path.join(out_dir, slug(run["run"]))
        plot_diagnostics(plt, run, base + "_diagnostics.png")
        written.append(base + "_diagnostics.png")
        matrices, names, source = subprompt_cos(run)
        if matrices:
            plot_heatmap(plt, run, base + "_subprompt_cos.png", matrices, names, source, n_classes)
            written.append(base + "_subprompt_cos.png")
        else:
            notes.append(f"Note: no sub-prompt heatmap for {run['run']}: {source}")
        if plot_usage(plt, run, base + "_usage.png"):
            written.append(base + "_usage.png")
        else:
            notes.append(f"Note: no usage histogram for {run['run']}: no per-class usage in its diagnostics")
    overview = os.path.join(out_dir, "overview.png")
    plot_overview(plt, runs, overview)
    written.append(overview)
    return written, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="folder(s) searched for MixPrompt runs")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument("--heatmap-classes", type=int, default=12, help="classes shown in a heatmap (default 12)")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for root in args.roots:
        if not os.path.isdir(root):
            print(f'ERROR: "{root}" is not a folder', file=sys.stderr)
            return 2
    runs = [r for d, root in find_diagnostic_runs(args.roots) if (r := load_diagnostic_run(d, root))]
    if not runs:
        print(f"Nothing found in {' '.join(args.roots)}: no folder with a {DIAGNOSTICS_FILE}", file=sys.stderr)
        return 1
    runs.sort(key=lambda r: (r["dataset"], r["K"] or 0, r["run"]))
    print(render(runs, args.format))
    if args.plot:
        written, notes = write_plots(runs, args.plot, max(1, args.heatmap_classes))
        for note in notes:
            print(note, file=sys.stderr)
        print(f"Wrote {len(written)} figures to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
