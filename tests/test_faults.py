"""Faults: kills, Ctrl-C, a full disk, two runs in one folder, corrupt images and checkpoints, wrong hints.

The end-to-end scenarios run ``train.py`` (its ``__main__`` block included) in processes forked from one
driver process that has imported everything once (``driver`` below, started once per module), so a dozen
runs cost seconds. Faults are injected inside the forked run: SIGKILL or SIGINT sent by the process to
itself at a chosen training step or halfway through writing a checkpoint, an ENOSPC from TensorBoard's
writer thread.
"""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, train_args

EPOCHS, STEPS_PER_EPOCH = 6, 4  # cars_root: 4 classes, NUM_SHOTS 4, batch 4
LONG = ["OPTIM.MAX_EPOCH", str(EPOCHS), "TRAIN.CHECKPOINT_FREQ", "1"]
KILLS = 5


# ------------------------------------------------------------------------------------------ the driver
def _inject(fault):
    """Arm ``fault`` in this (forked) run: ("kill"|"sigint", n) at the n-th backward, ("kill_in_save",)
    halfway through the first checkpoint file, ("enospc_tensorboard", n) at the n-th event record."""
    kind = fault[0]
    if kind in ("kill", "sigint"):
        backward, calls = torch.Tensor.backward, [0]

        def counted(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == fault[1]:
                os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGINT)
            return backward(self, *args, **kwargs)
        torch.Tensor.backward = counted
    elif kind == "kill_in_save":
        import io

        save = torch.save

        def half_then_die(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = half_then_die
    elif kind == "enospc_tensorboard":
        from tensorboard.summary.writer.record_writer import RecordWriter

        write, calls = RecordWriter.write, [0]

        def full_disk(self, data):
            calls[0] += 1
            if calls[0] >= fault[1]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(self, data)
        RecordWriter.write = full_disk


def _run_forked(argv, console, fault=None):
    """``python train.py argv`` in a forked child, output to ``console``; its exit status (-9: killed)."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code = 1
    try:
        import atexit
        import runpy

        import engine.run_lock

        engine.run_lock._held.clear()  # the driver's locks are another process's
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if fault:
            _inject(fault)
        sys.argv = ["train.py", *argv]
        try:
            runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        atexit._run_exitfuncs()  # what a normal exit does (releases the run lock)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def driver(spec_path):
    """Run every scenario of ``spec_path`` (JSON) and write ``{name: [exit status, ...]}`` next to it."""
    with open(spec_path) as f:
        spec = json.load(f)
    os.chdir(REPO_ROOT)
    import trainers.cli  # noqa: F401  (imports engine, datasets, trainers once, before forking)
    from engine.run_lock import run_lock

    statuses = {}
    for name, attempts in spec["scenarios"]:
        statuses[name] = []
        for i, (argv, fault, hold) in enumerate(attempts):
            console = os.path.join(spec["consoles"], f"{name}-{i}.txt")
            if hold:  # the driver holds the folder, as a second process would
                with run_lock(hold):
                    statuses[name].append(_run_forked(argv, console, fault))
            else:
                statuses[name].append(_run_forked(argv, console, fault))
    with open(spec_path + ".result", "w") as f:
        json.dump(statuses, f)


# ------------------------------------------------------------------------------------------ scenarios
@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip, cars_root):
    """Runs every end-to-end scenario once; tests read their exit statuses, consoles and folders."""
    base = tmp_path_factory.mktemp("faults")
    consoles = base / "consoles"
    consoles.mkdir()
    corrupt_root = base / "corrupt_data"
    shutil.copytree(cars_root, corrupt_root)
    broken = sorted((corrupt_root / "stanford_cars" / "cars_test").iterdir())[-1]
    broken.write_bytes(broken.read_bytes()[:200])

    def args(out, root=cars_root, opts=(), extra=()):
        return train_args("CoOp", str(root), str(base / out), tiny_clip, extra=extra, opts=[*LONG, *opts])

    rng = random.Random(16)
    faults = [("kill", rng.randint(1, STEPS_PER_EPOCH + 2)) for _ in range(KILLS - 1)]
    faults.insert(rng.randrange(KILLS), ("kill_in_save",))
    scenarios = [
        ("reference", [(args("reference"), None, None)]),
        ("killed", [(args("killed"), fault, None) for fault in faults] + [(args("killed"), None, None)]),
        ("ctrl_c", [(args("ctrl_c"), ("sigint", STEPS_PER_EPOCH + 2), None)]),
        ("disk_full", [(args("disk_full"), ("enospc_tensorboard", 3), None)]),
        ("locked", [(args("locked"), None, str(base / "locked"))]),
        ("corrupt_image", [(args("corrupt", root=corrupt_root, opts=["DATALOADER.NUM_WORKERS", "64"]), None, None)]),
        ("eval_no_epoch", [(args("reference", extra=["--eval-only", "--model-dir", str(base / "reference")]),
                            None, None)]),
    ]
    spec = base / "spec.json"
    spec.write_text(json.dumps({"scenarios": scenarios, "consoles": str(consoles)}))
    code = ("import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]; import test_faults; "
            "test_faults.driver(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(spec), str(REPO_ROOT / "tests"), str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = json.loads((base / "spec.json.result").read_text())

    def console(name, i=0):
        return (consoles / f"{name}-{i}.txt").read_text()
    return {"base": base, "status": statuses, "console": console, "faults": faults, "broken": broken}


def _logs(folder):
    return {p: p.read_text() for p in sorted(folder.glob("log.txt*"))}


def _weights(folder, epoch=EPOCHS):
    return torch.load(folder / "prompt_learner" / f"model.pth.tar-{epoch}", weights_only=True)["state_dict"]


def _epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("epoch [")]


def test_killed_five_times_resumes_to_the_uninterrupted_weights_and_keeps_every_log_line(runs):
    """Issue items 4 and the fault-injection check: SIGKILL at random steps and once halfway through a
    checkpoint write, resume each time; the final weights equal an uninterrupted run's, and the logs hold
    every epoch line (before: log.txt ended mid-line and lost every buffered epoch line)."""
    base, status = runs["base"], runs["status"]
    assert status["reference"] == [0]
    assert status["killed"] == [-signal.SIGKILL] * KILLS + [0], runs["faults"]
    reference, killed = _weights(base / "reference"), _weights(base / "killed")
    assert reference.keys() == killed.keys()
    assert all(torch.equal(reference[k], killed[k]) for k in reference)

    logs = _logs(base / "killed")
    assert len(logs) == KILLS + 1  # one per attempt: a resume never overwrites an earlier log
    assert all(text.endswith("\n") for text in logs.values())
    logged = {line for text in logs.values() for line in _epoch_lines(text)}
    for i in range(KILLS + 1):
        shown = _epoch_lines(runs["console"]("killed", i))  # what stdout showed before the kill
        assert set(shown) <= logged
    finished = {line.split(" time ")[0] for line in logged}
    assert finished >= {f"epoch [{e}/{EPOCHS}] batch [{STEPS_PER_EPOCH}/{STEPS_PER_EPOCH}]"
                        for e in range(1, EPOCHS + 1)}
    ref_result = [line for line in _logs(base / "reference")[base / "reference" / "log.txt"].splitlines()
                  if line.startswith("* accuracy")]
    assert ref_result and ref_result == [line for text in logs.values() for line in text.splitlines()
                                         if line.startswith("* accuracy")]


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_one_line(runs):
    for i in range(1, KILLS + 1):
        text = runs["console"]("killed", i)
        assert text.count("Took over the lock of") == 1 and "no longer running" in text
    assert not (runs["base"] / "killed" / ".lock").exists()  # released at the normal exit


def test_a_second_process_on_a_busy_folder_stops_naming_the_holder(runs):
    """Issue item 5: the same command twice in parallel; both ran and overwrote each other."""
    assert runs["status"]["locked"] == [2]
    text = runs["console"]("locked")
    [error] = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert "is in use by process" in error and "--output-dir" in error and "Traceback" not in text
    folder = runs["base"] / "locked"
    assert os.listdir(folder) == []  # nothing of the refused run was written (the holder's lock is gone now)


def test_ctrl_c_is_one_line_naming_the_last_checkpoint_exit_130(runs):
    """Issue item 6: Ctrl-C printed a 70-line KeyboardInterrupt traceback."""
    assert runs["status"]["ctrl_c"] == [130]
    text = runs["console"]("ctrl_c")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    [line] = [line for line in text.splitlines() if "Interrupted" in line]
    checkpoint = runs["base"] / "ctrl_c" / "prompt_learner" / "model.pth.tar-1"
    assert line == (f'ERROR: Interrupted; the last checkpoint in "{runs["base"] / "ctrl_c"}" is "{checkpoint}"; '
                    "re-run the same command to resume from it.")
    assert line in (runs["base"] / "ctrl_c" / "log.txt").read_text()


def test_full_disk_in_the_tensorboard_thread_is_one_paragraph_exit_2(runs):
    """Issue item 6: OSError 28 from TensorBoard's thread and the trainer: tracebacks, exit 1."""
    assert runs["status"]["disk_full"] == [2]
    text = runs["console"]("disk_full")
    assert "Traceback" not in text and "Exception in thread" not in text
    [error] = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert error.startswith("ERROR: The disk is full (No space left on device) while writing the run's files in")
    assert "re-run the same command" in error


def test_a_corrupt_test_image_stops_the_run_before_training(runs):
    """Issue item 6: a corrupt test image was found only after training had finished. Also item 9: 64
    workers asked for are lowered to the CPU count with one line, and torch's warning is gone."""
    assert runs["status"]["corrupt_image"] == [2]
    text = runs["console"]("corrupt_image")
    [error] = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert "cannot be read" in error and f'"{runs["broken"]}" (test)' in error
    assert not _epoch_lines(text) and "Traceback" not in text
    assert "DATALOADER.NUM_WORKERS 64 lowered to" in text and "worker processes in total" not in text


def test_eval_only_without_load_epoch_suggests_it(runs):
    """Issue item 7: "model-best.pth.tar not found" without a word about --load-epoch."""
    assert runs["status"]["eval_no_epoch"] == [2]
    [error] = [line for line in runs["console"]("eval_no_epoch").splitlines() if line.startswith("ERROR:")]
    assert "model-best.pth.tar" in error and f"--load-epoch {EPOCHS}" in error


# ------------------------------------------------------------------------------------------ unit level
def test_fault_exit_messages(tmp_path):
    from engine.checkpoint import save_checkpoint
    from engine.errors import fault_exit
    from engine.run_lock import run_lock

    folder = tmp_path / "run"
    assert fault_exit(OSError(errno.EIO, "I/O error")) == (None, None)  # a bug or a broken disk: traceback
    with run_lock(folder):
        status, message = fault_exit(KeyboardInterrupt())
        assert status == 130 and "no checkpoint was saved" in message and str(folder) in message
        save_checkpoint({"state_dict": {}, "epoch": 3}, str(folder / "prompt_learner"))
        status, message = fault_exit(KeyboardInterrupt())
        assert f'is "{folder / "prompt_learner" / "model.pth.tar-3"}"' in message
        status, message = fault_exit(PermissionError(errno.EACCES, "Permission denied", str(folder / "log.txt")))
        assert status == 2 and message.startswith(f'Permission denied for "{folder / "log.txt"}"')
        assert "--output-dir" in message and "resume" in message


def test_unwritable_output_folder_is_a_user_error(tmp_path):
    """Issue item 6: PermissionError traceback, exit 1 (here: the folder's parent is a file)."""
    from engine.errors import UserError
    from engine.run_lock import run_lock

    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="Cannot write into the output folder"):
        with run_lock(tmp_path / "file" / "run"):
            pass


def test_lock_is_reentrant_and_released(tmp_path):
    from engine.run_lock import LOCK_FILE, held_folders, run_lock

    with run_lock(tmp_path) as note:
        assert note is None and held_folders() == [str(tmp_path)]
        pid, host = (tmp_path / LOCK_FILE).read_text().split()
        assert int(pid) == os.getpid()
        with run_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists() and held_folders() == []


def test_log_lines_survive_sigkill(tmp_path):
    """Issue item 4 at unit level: every complete line reaches log.txt at once, a partial one never."""
    code = ("import os, signal, sys; from engine.utils import setup_logger; setup_logger(sys.argv[1]); "
            "[print(f'epoch [{i}/3] line') for i in range(1, 4)]; print('half', end=''); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "log.txt").read_text() == "".join(f"epoch [{i}/3] line\n" for i in range(1, 4))


def test_resumes_within_one_second_get_their_own_logs(tmp_path):
    from engine.utils import setup_logger

    console = sys.stdout
    try:
        paths = [setup_logger(str(tmp_path)) for _ in range(3)]
        print("last")
    finally:
        sys.stdout.close()
        sys.stdout = console
    assert len(set(paths)) == 3 and (tmp_path / "log.txt").exists()
    assert open(paths[-1]).read() == "last\n"


def test_truncated_checkpoint_says_so(tmp_path):
    """Issue item 7: a truncated checkpoint gave "OSError: [Errno 22] Invalid argument"."""
    from engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from engine.errors import UserError

    for epoch in (1, 2):
        save_checkpoint({"state_dict": {"w": torch.ones(1000) * epoch}, "epoch": epoch}, str(tmp_path))
    path = tmp_path / "model.pth.tar-2"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match="is truncated or corrupt .*Delete it"):
        load_checkpoint(str(path))
    path.unlink()  # as the message says: the resume falls back to the previous checkpoint
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.pth.tar-1")


def test_num_workers_capped_at_the_cpu_count(capsys):
    from engine import get_cfg_default
    from engine.data.manager import cap_num_workers, usable_cpus

    cfg = get_cfg_default()
    cfg.DATALOADER.NUM_WORKERS = usable_cpus() + 6
    cfg.freeze()
    assert cap_num_workers(cfg) == usable_cpus() == cfg.DATALOADER.NUM_WORKERS and cfg.is_frozen()
    assert capsys.readouterr().out == (f"DATALOADER.NUM_WORKERS {usable_cpus() + 6} lowered to {usable_cpus()}, "
                                       "the number of CPUs this process may use\n")
    assert cap_num_workers(cfg) == usable_cpus() and capsys.readouterr().out == ""


def test_inaturalist_hint_is_an_opt_train_accepts(tmp_path, fake_data_module, capsys):
    """Issue item 7: the printed DATASET.INATURALIST.VERSION 2021 was a type error with a wrong suggestion."""
    import shlex

    from engine.errors import ConfigError
    from trainers.cli import build_parser, setup_cfg

    fake_data_module.main(["inaturalist", str(tmp_path), "--version", "2021", "--classes", "2",
                           "--train-per-class", "2", "--val-per-class", "1"])
    hint = capsys.readouterr().out.split("Use it with ")[-1].strip()
    cfg = setup_cfg(build_parser().parse_args(shlex.split(hint)))
    assert cfg.DATASET.INATURALIST.VERSION == "2021" and cfg.DATASET.ROOT == str(tmp_path)
    with pytest.raises(ConfigError) as info:
        setup_cfg(build_parser().parse_args(["DATASET.INATURALIST.VERSION", "2021"]))
    assert "takes a string" in str(info.value) and "decimal point" not in str(info.value)


def test_image_check_is_cached_and_notices_changes(tmp_path):
    from PIL import Image

    from engine.data.image_check import check_images
    from engine.errors import DataError

    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(path)
        paths.append(str(path))
    cache = str(tmp_path / ".image_check.json")
    assert check_images({"train_x": paths[:2], "test": paths[2:]}, cache) == (4, 4)
    assert check_images({"train_x": paths[:2], "test": paths[2:]}, cache) == (4, 0)
    data = open(paths[3], "rb").read()
    open(paths[3], "wb").write(data[:len(data) // 2])
    stat = os.stat(paths[3])
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=rf'1 of the 4 images .*"{paths[3]}" \(test\)'):
        check_images({"train_x": paths[:2], "test": paths[2:]}, cache)
    assert check_images({"train_x": paths[:3]}, cache) == (3, 0)
