"""A warm interpreter for the tests: ``python train.py ...`` without paying torch's import at every start.

Nearly all of the suite's time went into starting interpreters: every ``train.py``, ``sweep.py`` and report
tool imports torch, torchvision (which loads ``torch._dynamo``), open_clip and the trainers, about 5 s of
CPU, against a second or two of work on the tiny test models. The tests start a hundred or more of them.

The server (one per pytest worker, started on first use) imports those libraries once and waits on a Unix
socket. The client is an executable that stands in for the interpreter (the tests hand it to the scripts as
``PYTHON`` and run ``train.py`` with it): it sends its command line, working folder, environment and its
stdin/stdout/stderr to the server, which forks; the child becomes ``python SCRIPT ARGS`` (or ``python -m
MODULE ARGS``) with those, and the client exits with the child's status. What a fresh interpreter would do
differently is kept out: the request is run cold (``os.execv`` of the real interpreter) unless the script
lies in this repository, no interpreter option is given, and the settings read at import time
(``MIXPROMPT_ENGINE``, ``HF_HUB_OFFLINE``, ``PYTHONPATH`` ...) are the server's. SIGINT and SIGTERM sent to
the client reach the child; a client killed outright takes its child with it.

Only the tests use this; every user-facing path runs the real interpreter. Tests that kill or time
processes, run torchrun, or need a different engine keep ``sys.executable``.
"""
import json
import os
import select
import signal
import socket
import struct
import sys

# The import-time settings: a request whose environment differs from the server's in any of them runs cold.
IMPORT_TIME_ENV = ("MIXPROMPT_ENGINE", "HF_HUB_OFFLINE", "PYTHONPATH", "PYTHONHASHSEED", "OMP_NUM_THREADS",
                   "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TORCH_HOME", "HF_HOME")
PRELOAD = ("torch", "torchvision", "open_clip", "numpy", "scipy", "yacs", "tabulate", "PIL.Image",
           "torch.utils.tensorboard", "engine", "datasets", "trainers", "trainers.cli", "trainers.runs",
           "trainers.run_index")
SOCKET_ENV = "WARM_PYTHON_SOCKET"
REAL_ENV = "WARM_PYTHON_REAL"
ROOT_ENV = "WARM_PYTHON_ROOT"
_STATUS = struct.Struct("!i")


# ------------------------------------------------------------------------------------------------ client

def _send_message(conn, payload, fds=()):
    data = json.dumps(payload).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(conn, [header + data], list(fds))
    else:
        conn.sendall(header + data)


def _receive_exactly(conn, size):
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def client(argv):
    """Run ``argv`` (the interpreter's arguments) warm when the server can, else exec the real interpreter."""
    real = os.environ.get(REAL_ENV) or sys.executable
    path = os.environ.get(SOCKET_ENV)
    if not path or not _warm_request(argv):
        os.execv(real, [real, *argv])
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        _send_message(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, fds=(0, 1, 2))
        (pid,) = _STATUS.unpack(_receive_exactly(conn, _STATUS.size))
    except (OSError, EOFError):
        os.execv(real, [real, *argv])  # no server (or it refused): a fresh interpreter
    if pid < 0:
        os.execv(real, [real, *argv])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: os.kill(pid, number))
    try:
        (status,) = _STATUS.unpack(_receive_exactly(conn, _STATUS.size))
    except EOFError:
        status = 1
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


def _warm_request(argv):
    """Only ``SCRIPT ARGS`` with a script of the repository, or ``-m MODULE ARGS``; no interpreter options."""
    root = os.environ.get(ROOT_ENV, "")
    if not argv or not root:
        return False
    inside = os.path.join(os.path.realpath(root), "")
    if argv[0] == "-m":  # the module is found from the current folder, which must be the repository
        return len(argv) > 1 and os.path.join(os.path.realpath(os.getcwd()), "") == inside
    if argv[0].startswith("-"):
        return False
    return os.path.realpath(argv[0]).startswith(inside)


# ------------------------------------------------------------------------------------------------ server

def serve(path, root):
    """Import the libraries, then fork one child per request until the socket's folder or the test process
    that started the server is gone."""
    original_path = list(sys.path)
    sys.path.insert(0, root)
    for name in PRELOAD:
        __import__(name)
    sys.path[:] = original_path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    parent = os.getppid()  # the test process: when it is gone (even killed), so is the server
    print("ready", flush=True)
    running = {}  # connection -> child pid
    while True:
        readable, _, _ = select.select([listener, *running], [], [], 0.05)
        for conn in readable:
            if conn is listener:
                accepted, _ = listener.accept()
                pid = _start(accepted, listener, root)
                if pid is None:
                    accepted.close()
                else:
                    running[accepted] = pid
            else:  # the client went away (killed): its child goes too
                if not conn.recv(1):
                    _kill(running.pop(conn))
                    conn.close()
        for conn, pid in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(_STATUS.pack(code))
                except OSError:
                    pass
                conn.close()
                del running[conn]
        if not os.path.exists(path) or os.getppid() != parent:
            break


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _start(conn, listener, root):
    """Receive one request and fork its child; returns the child's pid (None when the request is unusable)."""
    try:
        header, fds, _, _ = socket.recv_fds(conn, 4, 3)
        (size,) = struct.unpack("!I", header)
        request = json.loads(_receive_exactly(conn, size))
    except (OSError, EOFError, ValueError, struct.error):
        return None
    env = request["env"]
    if len(fds) != 3 or any(env.get(k) != os.environ.get(k) for k in IMPORT_TIME_ENV):
        for fd in fds:
            os.close(fd)
        conn.sendall(_STATUS.pack(-1))  # the client runs it cold
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        _child(request, fds, root)
    for fd in fds:
        os.close(fd)
    conn.sendall(_STATUS.pack(pid))
    return pid


def _child(request, fds, root):
    """Become ``python ARGV`` in the request's folder and environment; never returns."""
    import atexit
    import random
    import runpy

    status = 0
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # a fresh interpreter's unseeded generators differ from run to run
        import numpy
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0:0] = [request["cwd"]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = list(argv)
            sys.path[0:0] = [os.path.dirname(script)]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # what the interpreter prints for an uncaught exception
        import traceback
        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[1:])
