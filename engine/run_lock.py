"""One process at a time per run folder: ``OUTPUT_DIR/.lock``.

``train.py`` takes the lock before it writes anything into the folder and keeps it until the process exits
(training and ``--eval-only`` alike; under torchrun rank 0 alone takes it). A second process started on the
same folder stops with a :class:`RunFolderLocked` error naming the holder's PID and host, instead of both
overwriting each other's checkpoints and logs.

The lock is an advisory ``flock`` on the lock file, which the kernel drops when its holder dies, however it
dies; the file also records ``<pid> <host>`` for the error message. A lock file left behind by a killed
process is therefore taken over (with one line saying so). Where the filesystem has no ``flock`` (some
network mounts), the recorded PID decides: a live process on this host holds the folder, a dead one's lock
is taken over, and another host's lock is respected until the file is deleted.

    with run_lock(output_dir) as note:   # note: None, or the line saying a stale lock was taken over
        ...
"""
import atexit
import contextlib
import errno
import fcntl
import os
import socket

from .errors import UserError

LOCK_FILE = ".lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held = {}  # this process's locks: real path of the folder -> (folder as given, absolute; lock file descriptor)


class RunFolderLocked(UserError):
    """Another live process trains or evaluates in this run folder."""


def _host():
    return socket.gethostname()


def _read_holder(fd):
    """``(pid, host)`` recorded in an open lock file; ``(None, "")`` when it is empty or unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
        return int(text[0]), (text[1] if len(text) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _locked_error(folder, pid, host):
    who = f"process {pid}" + (f" on {host}" if host else "") if pid else "another process"
    return RunFolderLocked(
        f'The run folder "{folder}" is in use by {who} (lock file "{os.path.join(folder, LOCK_FILE)}"): two runs '
        "in one folder overwrite each other's checkpoints and logs. Wait for it to finish, stop it, or choose "
        "another --output-dir."
    )


def _open_locked(folder, path):
    """Open ``path`` and hold an exclusive lock on it; returns ``(fd, flocked)``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _NO_FLOCK:
                return fd, False
            pid, host = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _locked_error(folder, pid, host) from None
            raise
        try:  # a holder releasing its lock removes the file: make sure ours is still the one at the path
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


def acquire(folder):
    """Lock ``folder`` (created if needed) for this process; returns ``(fd, note)``. Raises
    :class:`RunFolderLocked` when a live process holds it, a UserError when the folder cannot be written."""
    path = os.path.join(folder, LOCK_FILE)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, flocked = _open_locked(folder, path)
    except OSError as exc:
        raise UserError(f'Cannot write into the output folder "{folder}" ({exc.strerror or exc}). Choose a '
                        "writable --output-dir, or make this one writable.") from None
    pid, host = _read_holder(fd)
    note = None
    if pid is not None and pid != os.getpid():
        if not flocked and (host != _host() or _alive(pid)):
            os.close(fd)
            raise _locked_error(folder, pid, host)
        where = "" if host == _host() else f" on {host}"
        note = (f'Took over the lock of "{folder}" left by process {pid}{where}, which is no longer running '
                "(killed?); continuing in this folder")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {_host()}\n".encode(), 0)
    return fd, note


def release(folder, fd):
    """Remove the lock file (when it is still ours) and drop the lock."""
    path = os.path.join(folder, LOCK_FILE)
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)


def held_folders():
    """The run folders this process holds, in the order they were locked."""
    return [folder for folder, _ in _held.values()]


def _take(output_dir):
    """``(folder, fd, note)`` after locking ``output_dir``; ``fd`` is None when this process holds it already."""
    folder = os.path.abspath(output_dir)
    if os.path.realpath(folder) in _held:
        return folder, None, None
    fd, note = acquire(folder)
    _held[os.path.realpath(folder)] = (folder, fd)
    return folder, fd, note


def _give_back(folder, fd):
    if fd is not None:
        _held.pop(os.path.realpath(folder), None)
        release(folder, fd)


@contextlib.contextmanager
def run_lock(output_dir):
    """Hold the lock of ``output_dir`` for the ``with`` block, printing the line that says so when a stale
    lock was taken over (and yielding it, else None). Re-entrant within one process."""
    folder, fd, note = _take(output_dir)
    if note:
        print(note)
    try:
        yield note
    finally:
        _give_back(folder, fd)


def hold_run_lock(output_dir):
    """Take the lock of ``output_dir`` until this process exits (``train.py``, before its log exists);
    returns the takeover line, or None, for the caller to print once the log is open."""
    folder, fd, note = _take(output_dir)
    atexit.register(_give_back, folder, fd)
    return note
