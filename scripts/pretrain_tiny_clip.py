"""Pretrain a tiny CLIP on the generated world (docs/synthetic_world.md) and write it in OpenAI's format.

Usage: python scripts/pretrain_tiny_clip.py OUT.pt [--quick] [--seed 0] [--threads N]
Then:  MODEL.BACKBONE.NAME OUT.pt INPUT.SIZE "(32, 32)"

Full quality takes about 7-8 minutes on 2 idle CPU cores (much longer on a busy machine); --quick (for
tests) about a minute. When OUT.pt and its sidecar OUT.pt.json already describe the same recipe, nothing
is done.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.clip.pretrain import is_cached, pretrain_tiny_clip, recipe_for  # noqa: E402
from trainers.clip.provenance import sidecar_path  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="checkpoint file to write (e.g. weights/world_clip.pt)")
    parser.add_argument("--quick", action="store_true", help="short run for tests (about a minute)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); the weights depend on it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    recipe = recipe_for(quick=args.quick, seed=args.seed)
    if is_cached(args.out, recipe):
        print(f"{args.out} is up to date (recipe and checksum in {sidecar_path(args.out)}); nothing to do")
        return 0
    print(f"Pretraining a tiny CLIP ({'quick' if args.quick else 'full'} recipe: {recipe})")
    path, info = pretrain_tiny_clip(args.out, recipe, progress=not args.no_progress, threads=args.threads)
    figures = ", ".join(f"{k} {v:.1f}%" for k, v in info["zero_shot"].items())
    print(f"Wrote {path} and {sidecar_path(path)} in {info['train_seconds']:.0f}s "
          f"({info['threads']} threads). Zero-shot: {figures} (chance 1.2% and 5.0%)")
    print(f'Use it with MODEL.BACKBONE.NAME {path} INPUT.SIZE "({recipe.image_size}, {recipe.image_size})"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
