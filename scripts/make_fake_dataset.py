#!/usr/bin/env python
"""Write a tiny fake dataset in a real on-disk format, to smoke-test an install or a training run.

    python scripts/make_fake_dataset.py stanford_cars ROOT [--classes 6] [--train-per-class 8]
        [--test-per-class 4] [--seed 0] [--image-size 64] [--with-split] [--force] [--modes 1]
    python scripts/make_fake_dataset.py inaturalist ROOT --version {2017,2018,2019,2021,2021_mini}
        [--classes 6] [--train-per-class 8] [--val-per-class 3] [--seed 0] [--image-size 32] [--force]

The generators live in ``datasets/fake.py`` (importable: ``write_fake_stanford_cars``, ...).
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from datasets.fake import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
