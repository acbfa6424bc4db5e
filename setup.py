"""MixPrompt: prompt learning on CLIP in the CoOp convention.

Like CoOp, the code runs from the repository root (``python train.py``, ``bash scripts/...``), so this
file installs the dependencies only and no importable packages: in particular no top-level ``datasets``
package that would shadow Hugging Face's ``datasets`` in the environment.
"""
from setuptools import setup

setup(
    name="mixprompt",
    version="0.1.0",
    description="MixPrompt: mixtures of learnable sub-prompts for CLIP, with CoOp/CoCoOp baselines",
    python_requires=">=3.9",
    packages=[],
    py_modules=[],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.20",
        "yacs>=0.1.8",
        "numpy",
        "scipy",
        "pillow",
        "pyyaml",
        "tabulate",
        "matplotlib",
        "tqdm",
        "tensorboard",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "filelock", "submitit"]},
)
