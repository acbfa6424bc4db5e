"""Errors that are the user's to fix (bad input, missing files, bad config).

``train.py`` and the CLIs catch :class:`UserError` and print its message as one paragraph, without a
traceback, then exit with status 2. Everything else is a bug and keeps its traceback, except the faults of
:func:`fault_exit`: Ctrl-C (one line, exit 130), a full disk or a missing permission (one paragraph, exit 2).
"""
import errno
import os


class UserError(Exception):
    """Base class: the message names the culprit (file, key, value) and says what was expected."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(UserError):
    """A dataset folder, split file, image or cache is missing or malformed."""


class WeightsError(UserError):
    """CLIP weights cannot be found, loaded or recognised."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step, the loss terms and likely causes."""


# ------------------------------------------------------------------------------------------ faults
# OSErrors the user fixes (disk full, quota, no permission, read-only filesystem): one paragraph, exit 2.
FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _run_folder():
    from .run_lock import held_folders

    folders = held_folders()
    return folders[0] if folders else None


def _last_checkpoint(folder):
    """Path of the newest checkpoint saved in a run folder (any model's), or None."""
    from .checkpoint import latest_checkpoint

    found = []
    for name in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else ():
        sub = os.path.join(folder, name)
        path = latest_checkpoint(sub) if os.path.isdir(sub) else None
        if path and os.path.isfile(path):
            found.append((os.path.getmtime(path), path))
    return max(found)[1] if found else None


def fault_exit(exc):
    """``(exit status, one-paragraph message)`` for a fault that needs no traceback: Ctrl-C (130), a full
    disk or a permission problem (2); ``(None, None)`` for anything else (a bug: keep the traceback). The
    message names the run folder this process holds and its last checkpoint."""
    folder = _run_folder()
    where = f' in "{folder}"' if folder else ""
    last = _last_checkpoint(folder)
    resume = (f'the last checkpoint{where} is "{last}"; re-run the same command to resume from it' if last else
              f"no checkpoint was saved{where} yet; re-run the same command to start again")
    if isinstance(exc, KeyboardInterrupt):
        return 130, f"Interrupted; {resume}."
    if isinstance(exc, OSError) and exc.errno in FIXABLE_ERRNOS:
        target = f'"{exc.filename}"' if exc.filename else f"the run's files{where}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = f"The disk is full ({exc.strerror or exc}) while writing {target}. Free some space"
        else:
            problem = (f"Permission denied for {target} ({exc.strerror or exc}). Make it accessible, or choose "
                       "another --output-dir")
        return 2, f"{problem}; {resume}."
    return None, None


def quiet_fixable_thread_errors():
    """Background writer threads (TensorBoard's) that hit a full disk print no traceback: the same error
    reaches the main thread at its next write, which reports it as one paragraph."""
    import threading

    def hook(args):
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in FIXABLE_ERRNOS:
            return
        threading.__excepthook__(args)

    threading.excepthook = hook
