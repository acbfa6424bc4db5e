"""Checkpoints in Dassl's layout, written atomically, loadable on current torch.

Layout per registered model: ``<dir>/<name>/model.pth.tar-<epoch>``, ``model-best.pth.tar`` and a
``checkpoint`` text file naming the latest one. A file is written to a temporary name in the same folder
and renamed into place, so a kill never leaves a half-written checkpoint behind.
"""
import os
import re
import tempfile
import zipfile
from collections import OrderedDict

import torch

from .errors import UserError
from .utils import get_rng_state, set_rng_state

EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")  # Dassl's per-epoch checkpoint name


def _atomic_write(path, write_fn):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path):
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    _atomic_write(path, write)


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _atomic_write(path, write)


def strip_module_prefix(state_dict):
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state_dict.items())


def save_checkpoint(state, save_dir, model_name=""):
    """Save ``state`` (keys state_dict, epoch, optimizer, scheduler, val_result, ...) and repoint
    ``save_dir/checkpoint`` at it. Returns the path written."""
    state = dict(state)
    state["state_dict"] = strip_module_prefix(state["state_dict"])
    fname = model_name or f"model.pth.tar-{state['epoch']}"
    fpath = os.path.join(save_dir, fname)
    atomic_torch_save(state, fpath)
    atomic_write_text(os.path.join(save_dir, "checkpoint"), fname + "\n")
    print(f"Checkpoint saved to {fpath}")
    return fpath


def _unreadable(fpath, exc):
    """The UserError for a checkpoint file torch cannot load, telling a cut-short file from a foreign one."""
    size = os.path.getsize(fpath)
    with open(fpath, "rb") as f:
        zip_archive = f.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6
    if zip_archive and not zipfile.is_zipfile(fpath):
        return UserError(
            f'Checkpoint "{fpath}" is truncated or corrupt ({size:,} bytes; {type(exc).__name__}: {exc}): the file '
            "was cut short (a full disk, an interrupted copy). Delete it: a resumed run then continues from the "
            "previous checkpoint, and --load-epoch can pick another saved epoch."
        )
    return UserError(
        f'Unable to load checkpoint "{fpath}" ({size:,} bytes): {type(exc).__name__}: {exc}. Expected a file '
        "written by torch.save (this project, Dassl or CoOp)."
    )


def load_checkpoint(fpath, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True``; files holding pickled objects (Dassl's warmup
    schedulers) fall back to a full unpickle with a note. Missing, truncated or unreadable files are a
    UserError saying what to do."""
    if not fpath or not os.path.isfile(fpath):
        raise UserError(f'Checkpoint not found: "{fpath}"')
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as safe_error:
        try:
            ckpt = torch.load(fpath, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise _unreadable(fpath, exc) from None
        print(f'Note: "{fpath}" holds pickled Python objects ({type(safe_error).__name__}); loaded it with '
              "weights_only=False. Only load checkpoints you trust.")
        return ckpt


def saved_epochs(model_dir):
    """Epochs N with a ``model.pth.tar-N`` in ``model_dir``, ascending (none when it does not exist)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(m.group(1)) for name in os.listdir(model_dir) if (m := EPOCH_FILE.match(name)))


def latest_checkpoint(model_dir):
    """Path named by ``model_dir/checkpoint``; without that pointer file, or when the file it names is gone
    (a run killed after writing its first checkpoint but before the pointer; a corrupt checkpoint deleted),
    the highest-numbered ``model.pth.tar-N`` there (every file is written atomically, so it is complete);
    None when there is neither."""
    pointer = os.path.join(model_dir, "checkpoint")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            name = f.readline().strip()
        if name and os.path.isfile(os.path.join(model_dir, name)):
            return os.path.join(model_dir, name)
    epochs = saved_epochs(model_dir)
    return os.path.join(model_dir, f"model.pth.tar-{epochs[-1]}") if epochs else None


def _model_not_found(fpath, epoch, saved):
    have = (f"saved epochs there: {', '.join(map(str, saved))}; pass --load-epoch N, e.g. --load-epoch {saved[-1]} "
            "(the last one)" if saved else "there is no model.pth.tar-N next to it either: check --model-dir")
    why = (" (model-best.pth.tar is written only by runs with TEST.FINAL_MODEL best_val; without --load-epoch "
           "--eval-only loads it)" if epoch is None else "")
    return f'Model not found at "{fpath}"{why}: {have}.'


class CheckpointMixin:
    """``save_model`` / ``resume_model_if_exist`` / ``load_model`` for a trainer with Dassl's model registry
    (``_models``, ``_optims``, ``_scheds``). Used by the built-in trainer and mixed in front of Dassl's, so
    both engines save plain state (loadable with weights_only=True), store every RNG state for exact
    resumes, and load with the project's ``load_checkpoint``.
    """

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        rng_state = get_rng_state()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self._models[name].state_dict(),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    "rng_state": rng_state,
                },
                os.path.join(directory, name),
                model_name=model_name,
            )

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        if not names or not all(os.path.isdir(os.path.join(directory, n)) for n in names):
            print("No checkpoint found, train from scratch")
            return 0
        latest = {name: latest_checkpoint(os.path.join(directory, name)) for name in names}
        if all(fpath is None for fpath in latest.values()):  # folders made, killed before the first save
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        rng_state = None
        for name, fpath in latest.items():
            if fpath is None:
                raise UserError(f'Cannot resume: "{os.path.join(directory, name)}" holds no checkpoint while the other '
                                "models' folders do. Delete the folder to train from scratch.")
            print(f'Loading checkpoint from "{fpath}"')
            ckpt = load_checkpoint(fpath)
            self._load_learned_state(name, ckpt["state_dict"], fpath)
            print("Loaded model weights")
            if self._optims[name] is not None and ckpt.get("optimizer") is not None:
                self._optims[name].load_state_dict(ckpt["optimizer"])
                print("Loaded optimizer")
            if self._scheds[name] is not None and ckpt.get("scheduler") is not None:
                self._scheds[name].load_state_dict(ckpt["scheduler"])
                print("Loaded scheduler")
            start_epoch = ckpt["epoch"]
            print(f"Previous epoch: {start_epoch}")
            rng_state = ckpt.get("rng_state", rng_state)
        if rng_state is not None:
            set_rng_state(rng_state)
        return start_epoch

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given "
                  "(ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            fname = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
            fpath = os.path.join(directory, name, fname)
            if not os.path.exists(fpath):
                raise UserError(_model_not_found(fpath, epoch, saved_epochs(os.path.join(directory, name))))
            ckpt = load_checkpoint(fpath)
            val_result = ckpt.get("val_result")
            extra = f", val_result = {val_result:.1f}" if val_result is not None else ""
            print(f'Loading weights to {name} from "{fpath}" (epoch = {ckpt["epoch"]}{extra})')
            self._load_learned_state(name, ckpt["state_dict"], fpath)

    # Buffers rebuilt from the class names at construction (CoOp's token_prefix / token_suffix): never
    # taken from a checkpoint, so a generic context trained on one class list can score another.
    checkpoint_ignored_keys = ()

    # Training statistics sized by the number of classes (e.g. MixPrompt's running usage): restored when
    # the class list matches, skipped with a note when a model is evaluated on other classes (base-to-new).
    checkpoint_class_sized_keys = ()

    def _load_learned_state(self, name, state_dict, fpath):
        model = self._models[name]
        ignored = set(self.checkpoint_ignored_keys)
        state_dict = {k: v for k, v in state_dict.items() if k not in ignored}
        own = model.state_dict()
        for key in self.checkpoint_class_sized_keys:
            if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
                print(f"Note: {key} in the checkpoint is for {tuple(state_dict[key].shape)[0]} classes, this model "
                      f"has {tuple(own[key].shape)[0]}; keeping the model's own (training statistic only)")
                state_dict[key] = own[key]
        missing = [k for k in own if k not in state_dict and k not in ignored]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]
        if missing or unexpected or mismatched:
            raise UserError(
                f'Checkpoint "{fpath}" does not fit model "{name}": missing {missing}, unexpected {unexpected}, '
                f"shape mismatch {mismatched}. Was it trained with another trainer or config (e.g. another "
                "number of classes, context length or K)?"
            )
        model.load_state_dict(state_dict, strict=False)
        self.after_weights_loaded()

    def after_weights_loaded(self):
        """Hook for trainers that cache anything derived from their parameters."""
