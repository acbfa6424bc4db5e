"""Open a finished run folder: its resolved config, its checkpoints, and the trained model rebuilt from them.

A run folder written by ``train.py`` holds ``config.yaml`` (the resolved config; ``config-latest.yaml`` after a
re-run into the same folder) and the learnable part's checkpoints in Dassl's layout:
``prompt_learner/model.pth.tar-N`` with a ``prompt_learner/checkpoint`` file naming the latest one.

    from trainers.run_folder import load_trained
    trainer = load_trained("output/.../seed1")                  # latest epoch, data where the run had it
    trainer = load_trained(run_dir, root="/new/data", epoch=5)  # the data moved; an earlier epoch

Paths recorded in the config (``DATASET.ROOT``, a weights file in ``MODEL.BACKBONE.NAME``) are taken as
they are, relative ones from the current folder, as ``train.py`` took them. Every problem the user can
fix (no config, no checkpoint, the data moved) raises :class:`RunFolderError` (a ``UserError``) with one
readable sentence; report tools print it as ``ERROR: ...`` and exit with status 2.
"""
import contextlib
import difflib
import io
import json
import os
import re
import tempfile

from engine.errors import DataError, UserError, WeightsError

CONFIG_NAMES = ("config-latest.yaml", "config.yaml")  # newest first: a re-run writes config-latest.yaml
LEARNER = "prompt_learner"
CHECKPOINT_NAME = re.compile(r"^model\.pth\.tar-(\d+)$")


class RunFolderError(UserError):
    """The run folder lacks what is needed (config, checkpoint) or points at data that is not there."""


# ------------------------------------------------------------------------------------------ files
def check_run_dir(run_dir):
    if not os.path.isdir(run_dir):
        raise RunFolderError(f'"{run_dir}" is not a folder (expected a run folder written by train.py)')


def find_run_config(run_dir):
    """Path of the run's resolved config (config-latest.yaml, else config.yaml)."""
    check_run_dir(run_dir)
    for name in CONFIG_NAMES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    raise RunFolderError(f'no config.yaml in "{run_dir}": not a run folder written by train.py')


def checkpoint_dir(run_dir):
    return os.path.join(run_dir, LEARNER)


def saved_epochs(run_dir):
    """Epochs with a ``prompt_learner/model.pth.tar-N`` file, ascending."""
    folder = checkpoint_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(CHECKPOINT_NAME.match, os.listdir(folder)) if m)


def latest_epoch(run_dir):
    """The epoch named by ``prompt_learner/checkpoint`` (the last one saved)."""
    check_run_dir(run_dir)
    pointer = os.path.join(checkpoint_dir(run_dir), "checkpoint")
    if not os.path.isfile(pointer):
        raise RunFolderError(f'no checkpoint in "{run_dir}": "{pointer}" is missing (was the run trained, with '
                             "checkpoints saved?)")
    with open(pointer) as f:
        name = f.readline().strip()
    match = CHECKPOINT_NAME.match(name)
    if match is None:
        raise RunFolderError(f'"{pointer}" names "{name}", not a model.pth.tar-N checkpoint; pass --load-epoch')
    return int(match.group(1))


def checkpoint_path(run_dir, epoch=None):
    """``(path, epoch)`` of the checkpoint of ``epoch`` (default: the latest); the file must exist."""
    epoch = latest_epoch(run_dir) if epoch is None else int(epoch)
    path = os.path.join(checkpoint_dir(run_dir), f"model.pth.tar-{epoch}")
    if not os.path.isfile(path):
        saved = saved_epochs(run_dir)
        have = f"saved epochs: {', '.join(map(str, saved))}" if saved else "no model.pth.tar-N file is there"
        raise RunFolderError(f'checkpoint "{path}" not found ({have})')
    return path, epoch


# ------------------------------------------------------------------------------------------ config
def check_data_root(cfg, config_path, root_given):
    root = cfg.DATASET.ROOT
    if root and not os.path.isdir(os.path.expanduser(root)):
        if root_given:
            raise RunFolderError(f'--root "{root}" is not a folder')
        raise RunFolderError(f'the data root recorded in "{config_path}", "{root}", does not exist (the data moved?); '
                             "pass --root with the folder that now holds the dataset")


def load_run_config(run_dir, root=None, opts=(), check_data=True):
    """The run's resolved config through train.py's own merge (defaults, then the run's config, then the keys its
    trainer added after it was written, which the config cannot hold, at the values the run behaved as
    (``added_keys``), then ``opts``), with ``DATASET.ROOT`` replaced by ``root`` when given. With
    ``check_data`` the data root must exist."""
    config_path = find_run_config(run_dir)
    from .cli import build_parser, setup_cfg

    argv = ["--config-file", config_path, *(["--root", str(root)] if root else []),
            *map(str, [*as_opts(added_keys(config_path)), *opts])]
    cfg = setup_cfg(build_parser().parse_args(argv))
    if check_data:
        check_data_root(cfg, config_path, bool(root))
    return cfg


def added_keys(config_path, given=()):
    """{key: value} for every key the run's trainer added after ``config_path`` was written, at the value the
    run behaved as (the trainer's ``keys_added_later``), except the keys in ``given``: an old run is rebuilt as
    it was trained, not with today's default (e.g. MixPrompt's ZEROSHOT_WEIGHT, which changes evaluation)."""
    import yaml

    from .runs import flatten, keys_added_later

    with open(config_path) as f:
        saved = yaml.safe_load(f)
    if not isinstance(saved, dict):
        raise RunFolderError(f'"{config_path}" is not a config written by train.py (expected a YAML mapping)')
    saved = flatten(saved)
    return {key: value for key, value in keys_added_later(saved.get("TRAINER.NAME")).items()
            if key not in saved and key not in given}


def as_opts(settings):
    """KEY VALUE opts from {key: value}, strings quoted so that yacs reads them back as strings."""
    return [item for key, value in settings.items() for item in (key, repr(value) if isinstance(value, str) else value)]


def saved_model_added_keys(model_dir, opts):
    """``added_keys`` of the model in ``model_dir`` (train.py --eval-only --model-dir) less the keys of the
    command line's ``opts`` (KEY VALUE list): {} when the folder has no config of train.py's."""
    try:
        config_path = find_run_config(model_dir)
    except RunFolderError:
        return {}
    return added_keys(config_path, given=set(list(opts)[::2]))


def load_classnames(run_dir, root=None):
    """The run's class names, label order: from its diagnostics_summary.json (MixPrompt) when it has them,
    else from the dataset itself (which then has to be where the config, or ``root``, says)."""
    summary = os.path.join(run_dir, "diagnostics_summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            names = json.load(f).get("classnames")
        if names:
            return list(names)
    cfg = load_run_config(run_dir, root)
    from engine import DATASET_REGISTRY

    with contextlib.redirect_stdout(io.StringIO()), data_root_hint(cfg):
        dataset = DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
    return list(dataset.classnames)


def class_label(name, classnames):
    """Label of class ``name`` (exact, else case-insensitive); RunFolderError listing the closest names."""
    if name in classnames:
        return classnames.index(name)
    folded = [c.casefold() for c in classnames]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    close = difflib.get_close_matches(name, classnames, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(map(repr, close))}; " if close else ""
    shown = ", ".join(map(repr, classnames[:6])) + (", ..." if len(classnames) > 6 else "")
    raise RunFolderError(f'class "{name}" not found among the run\'s {len(classnames)} classes ({hint}available: '
                         f"{shown}; or choose by --class-index 0..{len(classnames) - 1})")


def check_class_index(index, n_classes):
    if not 0 <= index < n_classes:
        raise RunFolderError(f"--class-index {index} is out of range: the run has {n_classes} classes "
                             f"(0..{n_classes - 1})")
    return index


@contextlib.contextmanager
def data_root_hint(cfg):
    """A DataError raised inside (a dataset file not found or unreadable) also names the run's data root
    and says to pass --root."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{exc} (the run's data root is \"{cfg.DATASET.ROOT}\"; pass --root if the data moved)") \
            from None


@contextlib.contextmanager
def weights_hint(name, given=False):
    """A WeightsError raised inside also names the weights and says to pass --weights."""
    try:
        yield
    except WeightsError as exc:
        fix = "--weights does not name usable weights" if given else \
            f'the run\'s CLIP weights are "{name}"; pass --weights if they moved'
        raise WeightsError(f"{exc} ({fix})") from None


# ------------------------------------------------------------------------------------------ model
def load_trained(run_dir, root=None, epoch=None, opts=(), log=None):
    """The run's trainer, rebuilt from its config and loaded with the checkpoint of ``epoch`` (default: the
    latest), in eval mode. ``opts`` are extra KEY VALUE config overrides; the construction messages go to
    ``log`` (a text stream; default: discarded). k-means initialisation is skipped (the checkpoint replaces
    the offsets) and data loading runs in the main process. Raises RunFolderError / UserError."""
    from .mixprompt import random_init_opts

    path, epoch = checkpoint_path(run_dir, epoch)
    base_opts = ["DATALOADER.NUM_WORKERS", "0", *random_init_opts()]
    with tempfile.TemporaryDirectory(prefix="run_folder-") as tmp:  # OUTPUT_DIR: nothing of the run is touched
        cfg = load_run_config(run_dir, root, [*base_opts, "OUTPUT_DIR", tmp, *opts])
        trainer = build_and_load(cfg, run_dir, epoch, log)
    trainer.loaded_epoch = epoch
    trainer.checkpoint_file = path
    return trainer


def build_and_load(cfg, run_dir, epoch, log):
    from engine import build_trainer

    with contextlib.redirect_stdout(log if log is not None else io.StringIO()):
        with data_root_hint(cfg), weights_hint(cfg.MODEL.BACKBONE.NAME):
            trainer = build_trainer(cfg)
        trainer.load_model(run_dir, epoch=epoch)
        trainer.set_model_mode("eval")
    return trainer
