"""Write a tiny CLIP with seeded RANDOM weights in OpenAI's checkpoint format (for tests, demos, benchmarks).

Usage: python scripts/make_tiny_clip.py OUT.pt [--seed 0] [--arch vit|rn]
Then: MODEL.BACKBONE.NAME OUT.pt
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.clip.tiny import ARCHES, save_tiny_clip  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="checkpoint file to write (e.g. weights/tiny-vit.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--arch", choices=ARCHES, default="vit", help="image tower: vit (patch 32) or rn "
                        "(ModifiedResNet); default vit")
    args = parser.parse_args(argv)
    path = save_tiny_clip(args.out, seed=args.seed, arch=args.arch)
    print(f"Wrote tiny CLIP ({args.arch}, seed {args.seed}, input resolution 224) to {path}")
    print("Reminder: its weights are RANDOM; accuracies obtained with it are meaningless. "
          f"Use it with MODEL.BACKBONE.NAME {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
