"""The tests' warm interpreter (tests/warm_python.py) behaves like the real one for what the tests look at:
output, exit status, working folder, environment; anything it cannot run the same way runs cold."""
import os
import subprocess
import sys

from conftest import REPO_ROOT, warm_python


def run(python, *argv, cwd=REPO_ROOT, **env):
    return subprocess.run([python, *argv], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MIXPROMPT_ENGINE="builtin", HF_HUB_OFFLINE="1", **env))


def test_a_script_and_a_module_give_the_real_interpreters_output_and_status(tmp_path):
    warm = warm_python()
    assert warm != sys.executable, "the warm server did not start"
    for argv in (["train.py", "--help"], ["train.py", "--no-such-flag"], ["-m", "json.tool", str(tmp_path / "missing.json")]):
        cold, hot = run(sys.executable, *argv), run(warm, *argv)
        assert (hot.returncode, hot.stdout) == (cold.returncode, cold.stdout), argv
        assert hot.stderr.splitlines()[-1:] == cold.stderr.splitlines()[-1:], argv


def test_the_child_gets_the_callers_folder_environment_and_arguments(tmp_path):
    probe = tmp_path / "probe.py"  # outside the repository: run cold, by the real interpreter
    probe.write_text("import os, sys; print(os.getcwd(), os.environ['PROBE'], sys.argv[1:]); sys.exit(3)\n")
    proc = run(warm_python(), str(probe), "a", "b c", cwd=tmp_path, PROBE="x")
    assert proc.returncode == 3 and proc.stdout.split() == [str(tmp_path), "x", "['a',", "'b", "c']"]
    # inside the repository (warm): a script that reports the same things
    script = REPO_ROOT / "scripts" / "parse_results.py"
    proc = run(warm_python(), str(script), str(tmp_path / "nothing"), cwd=tmp_path)
    cold = run(sys.executable, str(script), str(tmp_path / "nothing"), cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (cold.returncode, cold.stdout, cold.stderr)
