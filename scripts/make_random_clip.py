"""Write a real-size CLIP with seeded RANDOM weights in OpenAI's checkpoint format (for speed and memory).

Usage: python scripts/make_random_clip.py ViT-B/16 OUT.pt [--seed 0] [--precision fp32|fp16]
Then: MODEL.BACKBONE.NAME OUT.pt (the sidecar OUT.pt.json records that the weights are random).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.clip.random_clip import DTYPES, random_clip_names, save_random_clip  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=random_clip_names(), metavar="ARCH",
                        help=f"CLIP architecture, one of {', '.join(random_clip_names())}")
    parser.add_argument("out", help="checkpoint file to write (e.g. weights/random-vit-b16.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32",
                        help="stored precision (fp16 halves the file; loading casts to fp32); default fp32")
    args = parser.parse_args(argv)
    path = save_random_clip(args.out, args.arch, seed=args.seed, precision=args.precision)
    print(f"Wrote random CLIP {args.arch} (seed {args.seed}, {args.precision}) to {path}, sidecar {path}.json")
    print("Reminder: its weights are RANDOM; only timings and memory measured with it mean anything. "
          f"Use it with MODEL.BACKBONE.NAME {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
