#!/usr/bin/env python
"""Nearest vocabulary tokens of a run's learned context vectors (CoOp's interpret_prompt.py, for every trainer).

    python scripts/interpret_prompt.py RUN_DIR [--topk 5] [--metric euclidean|cosine]
        [--classes NAME ...] [--class-index I ...] [--load-epoch N] [--weights PATH] [--root DATA] [--json]

Each learned context vector (width W) is compared with every row of CLIP's token embedding matrix (the
weights named by the run's MODEL.BACKBONE.NAME, ``--weights`` when they moved): one table per prompt, a
row per context position with its ``--topk`` nearest tokens, and the prompt "read" through the nearest
token of each position. Distances are Euclidean, as in CoOp; ``--metric cosine`` ranks by cosine
similarity instead (higher is closer). Tokens are OpenAI's BPE strings as open_clip's SimpleTokenizer
decodes them (``</w>`` ends a word).

What is shown, from the checkpoint's ``state_dict`` (``prompt_learner/model.pth.tar-N``, the latest or
``--load-epoch``):
- CoOp: ``ctx`` (M, W); class-specific contexts (C, M, W), for the chosen classes;
- CoCoOp: ``ctx`` (M, W), the context before the image-conditioned shift of its meta-net;
- MixPrompt with ``OFFSET_SPACE token``: the shared ``ctx`` (M, W), then ctx + offset of every sub-prompt
  (offsets (C, K, M, W) with SCOPE class: for the chosen classes; (K, M, W) with SCOPE shared).
MixPrompt with ``OFFSET_SPACE feature`` learns offsets of class text *features*, not token embeddings: there
is no context to decode, and the tool says so (exit status 2); see scripts/subprompt_gallery.py instead.

Classes (class-specific contexts): by name or index; default the first class. Class names come from the
run's diagnostics_summary.json, else from the dataset (``--root`` when it moved).
"""
import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SUPPORTED = ("CoOp", "CoCoOp", "MixPrompt")


def build_parser():
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=doc[0], epilog="\n\n".join(doc[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a CoOp, CoCoOp or MixPrompt run folder")
    parser.add_argument("--topk", type=int, default=5, help="nearest tokens per context vector (default 5)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                        help="euclidean distance (CoOp's choice, default) or cosine similarity")
    parser.add_argument("--classes", nargs="+", default=[], metavar="NAME", help="classes by name")
    parser.add_argument("--class-index", nargs="+", type=int, default=[], metavar="I", help="classes by label")
    parser.add_argument("--load-epoch", type=int, metavar="N", help="checkpoint epoch (default: the latest)")
    parser.add_argument("--weights", help="CLIP weights, when they are no longer where the run's config says")
    parser.add_argument("--root", help="data root (only read for class names), when the data moved")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


# ------------------------------------------------------------------------------------------ inputs
def run_setup(args):
    """(config, state_dict of the learnable part, epoch); errors if the run has no token context."""
    from engine import load_checkpoint
    from trainers.run_folder import RunFolderError, checkpoint_path, load_run_config

    cfg = load_run_config(args.run_dir, args.root, check_data=False)
    name = cfg.TRAINER.NAME
    if name not in SUPPORTED:
        raise RunFolderError(f'"{args.run_dir}" is a {name or "?"} run: it learns no context vectors (this tool '
                             f"reads {', '.join(SUPPORTED)} runs)")
    if name == "MixPrompt" and cfg.TRAINER.MIXPROMPT.OFFSET_SPACE != "token":
        raise RunFolderError(
            f'"{args.run_dir}" is a MixPrompt run in feature space (TRAINER.MIXPROMPT.OFFSET_SPACE '
            f'"{cfg.TRAINER.MIXPROMPT.OFFSET_SPACE}"): its sub-prompts are offsets of the class text features, '
            "not token embeddings, so there are no context vectors to decode into words; use "
            "scripts/subprompt_gallery.py to see what its sub-prompts learned")
    path, epoch = checkpoint_path(args.run_dir, args.load_epoch)
    with contextlib.redirect_stdout(sys.stderr):  # a note about pickled checkpoints belongs on stderr
        state = load_checkpoint(path)["state_dict"]
    if "ctx" not in state:
        raise RunFolderError(f'checkpoint "{path}" has no "ctx" (keys: {", ".join(sorted(state))})')
    return cfg, state, epoch


def token_embedding(backbone):
    """(embedding (V, W) float32, LoadedCLIP) of the CLIP weights ``backbone``."""
    from trainers.clip import TextEncoder, load_clip

    with contextlib.redirect_stdout(io.StringIO()):
        loaded = load_clip(backbone, device="cpu")
    weight = TextEncoder(loaded.model).token_embedding.weight.detach().float()  # (V, W)
    return weight, loaded


def choose_classes(args, n_classes, classnames):
    """Chosen labels (default: the first class)."""
    from trainers.run_folder import check_class_index, class_label

    chosen = ([class_label(name, classnames) for name in args.classes]
              + [check_class_index(index, n_classes) for index in args.class_index])
    if not chosen and n_classes > 1:
        print(f"Note: class-specific contexts; showing class 0 of {n_classes} (choose with --classes or "
              "--class-index)", file=sys.stderr)
    return list(dict.fromkeys(chosen)) or [0]


def class_names_for(args, n_classes):
    """The run's class names; with only --class-index (or none) and no way to read them, "class I"."""
    from engine.errors import UserError
    from trainers.run_folder import load_classnames

    try:
        names = load_classnames(args.run_dir, args.root)
    except UserError as exc:
        if args.classes:
            raise
        print(f"Note: no class names ({exc})", file=sys.stderr)
        return [f"class {i}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise UserError(f"the checkpoint holds contexts for {n_classes} classes but the run's dataset has "
                        f"{len(names)}: was the run folder reused for another dataset?")
    return names


# ------------------------------------------------------------------------------------------ prompts
def prompts_to_show(cfg, state, args):
    """[(title, info dict, context vectors (M, W))] in display order."""
    ctx = state["ctx"].float()  # (M, W) or, class-specific CoOp, (C, M, W)
    name = cfg.TRAINER.NAME
    if ctx.dim() == 3:
        names = class_names_for(args, ctx.shape[0])
        return [(f"class-specific context of {names[c]!r} (class {c})", {"class": c, "classname": names[c]}, ctx[c])
                for c in choose_classes(args, ctx.shape[0], names)]
    what = "context before the meta-net's image-conditioned shift" if name == "CoCoOp" else "generic context"
    if name == "MixPrompt":
        what = "shared context ctx (every sub-prompt is ctx + its offset)"
    prompts = [(f"{name} {what}", {}, ctx)]
    if name != "MixPrompt":
        return prompts
    offsets = state["offsets"].float()  # (C, K, M, W) class scope or (K, M, W) shared scope
    if offsets.dim() == 3:
        return prompts + [(f"sub-prompt {k + 1} (shared by all classes): ctx + offset", {"subprompt": k,
                           "offset_norm": offsets[k].norm(dim=-1).mean().item()}, ctx + offsets[k])
                          for k in range(offsets.shape[0])]
    names = class_names_for(args, offsets.shape[0])
    for c in choose_classes(args, offsets.shape[0], names):
        for k in range(offsets.shape[1]):
            info = {"class": c, "classname": names[c], "subprompt": k,
                    "offset_norm": offsets[c, k].norm(dim=-1).mean().item()}
            prompts.append((f"{names[c]!r} (class {c}), sub-prompt {k + 1}: ctx + offset", info, ctx + offsets[c, k]))
    return prompts


def nearest_tokens(vectors, embedding, topk, metric):
    """(values (M, topk), ids (M, topk)): Euclidean distances ascending, or cosine similarities descending."""
    import torch
    import torch.nn.functional as F

    if metric == "cosine":
        sim = F.normalize(vectors, dim=-1) @ F.normalize(embedding, dim=-1).T  # (M, V)
        return torch.topk(sim, topk, dim=1)
    distance = torch.cdist(vectors, embedding)  # (M, V)
    return torch.topk(distance, topk, dim=1, largest=False)


def interpret(prompts, embedding, bpe, topk, metric):
    out = []
    for title, info, vectors in prompts:
        values, ids = nearest_tokens(vectors, embedding, topk, metric)
        positions = [{"position": m + 1, "nearest": [{"id": i, "token": bpe.decoder[i], metric: round(v, 4)}
                                                      for i, v in zip(ids[m].tolist(), values[m].tolist())]}
                     for m in range(len(vectors))]
        reads_as = bpe.decode(ids[:, 0].tolist()).strip()
        out.append({"title": title, **info, "reads_as": reads_as, "positions": positions})
    return out


# ------------------------------------------------------------------------------------------ output
def render_tables(result):
    from tabulate import tabulate

    metric = result["metric"]
    lines = [f"Nearest tokens of the learned context of {result['run']} ({result['trainer']}, epoch "
             f"{result['epoch']}, CLIP {result['backbone']}; {metric}"
             + (" distance, smaller is closer)" if metric == "euclidean" else " similarity, larger is closer)")]
    for prompt in result["prompts"]:
        norm = f" (mean |offset| per position {prompt['offset_norm']:.4f})" if "offset_norm" in prompt else ""
        rows = [[p["position"], *[f"{n['token']} ({n[metric]:.4f})" for n in p["nearest"]]]
                for p in prompt["positions"]]
        headers = ["pos", *[f"#{r + 1}" for r in range(len(prompt["positions"][0]["nearest"]))]]
        lines += ["", f"== {prompt['title']}{norm}", tabulate(rows, headers=headers, tablefmt="github"),
                  f"reads as: {prompt['reads_as']!r}"]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        print("ERROR: --topk must be at least 1", file=sys.stderr)
        return 2
    from engine.errors import UserError
    from trainers.run_folder import weights_hint

    try:
        cfg, state, epoch = run_setup(args)
        backbone = args.weights or cfg.MODEL.BACKBONE.NAME
        with weights_hint(backbone, given=bool(args.weights)):
            embedding, loaded = token_embedding(backbone)
        if state["ctx"].shape[-1] != embedding.shape[1]:
            raise UserError(f'the context width {state["ctx"].shape[-1]} does not match the token embedding width '
                            f'{embedding.shape[1]} of "{backbone}": not the CLIP this run was trained with')
        prompts = prompts_to_show(cfg, state, args)
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    from trainers.clip.text import _bpe

    if loaded.random_weights:
        print(f'Note: "{backbone}" holds random test weights: the nearest tokens mean nothing', file=sys.stderr)
    result = {"run": os.path.abspath(args.run_dir), "trainer": cfg.TRAINER.NAME, "epoch": epoch,
              "backbone": backbone, "metric": args.metric,
              "prompts": interpret(prompts, embedding, _bpe(), min(args.topk, len(embedding)), args.metric)}
    print(json.dumps(result, indent=1) if args.json else render_tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
