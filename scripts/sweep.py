#!/usr/bin/env python
"""Run a grid of experiments (trainers x datasets x configs x shots x K x seeds) as the run scripts would.

    python scripts/sweep.py --trainers MixPrompt CoOp ZeroshotCLIP --datasets stanford_cars \\
        --shots 1 16 --seeds 1 2 3 --K 8 32 [--cfg [TRAINER=]CFG ...] [--tag TAG] [--data DATA] \\
        [--output OUTPUT] [--dry-run] [--executor local|submitit-local|slurm] [--opts KEY VALUE ...]

Each run gets exactly the ``train.py`` command line and output folder that ``scripts/<method>/main.sh``
and ``scripts/zsclip/zeroshot.sh`` give it (docs/scripts.md), in CoOp's layout:

    $OUTPUT/<DATASET>/MixPrompt/<CFG>[_<TAG>]_<SHOTS>shots/k<K>/seed<SEED>
    $OUTPUT/<DATASET>/CoOp/<CFG>[_<TAG>]_<SHOTS>shots/nctx<NCTX>_csc<CSC>_ctp<CTP>/seed<SEED>
    $OUTPUT/<DATASET>/{CoCoOp,LinearProbeCLIP}/<CFG>[_<TAG>]_<SHOTS>shots/seed<SEED>
    $OUTPUT/ZeroshotCLIP/<CFG>[_ensemble][_<TAG>]/<DATASET>            (no shots, no seeds)

K applies to MixPrompt only, ``--nctx --csc --ctp`` to CoOp only, ``--ensemble`` to ZeroshotCLIP only.
CFG defaults to each script's default. A finished run (a ``log.txt*`` with ``* accuracy: X%`` after
``Finish training``; zero-shot: after ``=> result``) is skipped with CoOp's message; an unfinished one is
run again into its folder, where ``train.py`` resumes from its latest checkpoint.

``--dry-run`` prints the plan (run folder, status pending / partial / finished, command) and runs nothing.
Before running, every distinct config is assembled once with ``train.py``'s own code, so an unknown key
or a wrongly typed value in ``--opts`` stops the sweep before the first run (``--no-check`` skips that).

Executors:
- ``local`` (default): one run after another in a subprocess, progress ``[i/n]``. A failing run does not
  stop the sweep (``--stop-on-failure`` does, like the shell scripts); the summary lists the failures and
  the exit status is the first failing run's (2 for bad input).
- ``submitit-local``: the same runs as submitit jobs on this machine (at most ``--array-parallelism`` at
  once, default 1), waited for; exit status 1 when one failed. A job sees ``--gpus-per-node`` GPUs
  (default 0: CPU; submitit sets CUDA_VISIBLE_DEVICES).
- ``slurm``: one SLURM job array through submitit (``--partition --gpus-per-node`` (default 1)
  ``--cpus-per-task --mem-gb --timeout-min --array-parallelism --slurm-extra KEY=VALUE --slurm-setup CMD``),
  logs under ``--logs`` (default ``$OUTPUT/submitit/%j``). Returns after submission unless ``--wait``.
Each job runs the run's ``train.py`` command in a subprocess from the repository root, after checking
again that the run has not finished meanwhile. Bad input stops with one ``ERROR:`` line, exit status 2.
"""
import argparse
import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIP_MESSAGE = "Oops! The results exist at {} (so skip this job)"
ACCURACY_LINE = re.compile(r"^\* accuracy: [0-9.eE+-]+%")
POSITIVE_INT = re.compile(r"^[1-9][0-9]*$")
NON_NEGATIVE_INT = re.compile(r"^[0-9]+$")
SAFE_TAG = re.compile(r"^[A-Za-z0-9.+-][A-Za-z0-9_.+-]*$")
SHOTS_KEY = "DATASET.NUM_SHOTS"


@dataclass(frozen=True)
class Method:
    """What a run script fixes for one trainer: default CFG, config folder and the opts keys it refuses."""
    default_cfg: str
    config_dir: str
    reserved: tuple  # (KEY, the sweep flag that sets it instead)
    few_shot: bool = True


METHODS = {
    "MixPrompt": Method("vit_b16", "MixPrompt", ((SHOTS_KEY, "--shots"), ("TRAINER.MIXPROMPT.K", "--K"))),
    "CoOp": Method("vit_b16_ep50", "CoOp", ((SHOTS_KEY, "--shots"), ("TRAINER.COOP.N_CTX", "--nctx"),
                                           ("TRAINER.COOP.CSC", "--csc"),
                                           ("TRAINER.COOP.CLASS_TOKEN_POSITION", "--ctp"))),
    "CoCoOp": Method("vit_b16_c4_ep10_batch1_ctxv1", "CoCoOp", ((SHOTS_KEY, "--shots"),)),
    "LinearProbeCLIP": Method("vit_b16", "LinearProbeCLIP", ((SHOTS_KEY, "--shots"),)),
    "ZeroshotCLIP": Method("vit_b16", "CoOp", (("TRAINER.ZSCLIP.ENSEMBLE", "--ensemble"),), few_shot=False),
}
# the run scripts' folder names are accepted as trainer names too
ALIASES = {"zsclip": "ZeroshotCLIP", "linear_probe": "LinearProbeCLIP"}
# keys the sweep sets from its own flags for every trainer: in --opts they would move or mislabel the run
ALWAYS_RESERVED = (("SEED", "--seeds"), ("OUTPUT_DIR", "--output"), ("DATASET.ROOT", "--data"))


@dataclass
class Run:
    label: str
    run_dir: str
    argv: list
    signal: str  # the line after which the test accuracy marks the run finished
    status: str = "pending"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)")


def fail(message):
    """One ERROR line on stderr, exit status 2 (bad input, nothing run)."""
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(2)


def build_parser():
    doc = __doc__.split("\n\n")
    parser = Parser(description=doc[0], epilog="\n\n".join(doc[2:]) + "\n\nMore: docs/scripts.md, section Sweeps.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    grid = parser.add_argument_group("grid")
    grid.add_argument("--trainers", nargs="+", required=True, metavar="TRAINER",
                      help=f"any of {' '.join(METHODS)} (or the scripts' folder names: mixprompt, coop, ...)")
    grid.add_argument("--datasets", nargs="+", required=True, metavar="DATASET",
                      help="names of configs/datasets/<DATASET>.yaml")
    grid.add_argument("--shots", nargs="+", default=["16"], help="training images per class (default 16)")
    grid.add_argument("--seeds", nargs="+", default=["1", "2", "3"], help="one run each (default 1 2 3)")
    grid.add_argument("--K", nargs="+", default=None, help="MixPrompt's sub-prompts per class (required with it)")
    grid.add_argument("--cfg", nargs="+", default=[], metavar="[TRAINER=]CFG",
                      help="configs/trainers/<Trainer>/<CFG>.yaml (zero-shot: a CoOp config); CFG alone applies "
                           "to every trainer; default: each script's default")
    grid.add_argument("--tag", default="", help="variant name in the config folder: <CFG>_<TAG>_<SHOTS>shots")
    grid.add_argument("--nctx", nargs="+", default=["16"], help="CoOp: TRAINER.COOP.N_CTX (default 16)")
    grid.add_argument("--csc", nargs="+", default=["False"], help="CoOp: TRAINER.COOP.CSC (default False)")
    grid.add_argument("--ctp", nargs="+", default=["end"], help="CoOp: class token position (default end)")
    grid.add_argument("--ensemble", nargs="+", default=["False"], help="ZeroshotCLIP: prompt ensemble (default False)")
    grid.add_argument("--data", default="data", help="dataset root, train.py --root (default data)")
    grid.add_argument("--output", default="output", help="output root (default output)")
    grid.add_argument("--python", default=sys.executable, help="interpreter for train.py (default: this one)")
    grid.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                      help="config options appended to every train.py command; must come last")
    run = parser.add_argument_group("running")
    run.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    run.add_argument("--no-check", action="store_true", help="do not assemble the configs before running")
    run.add_argument("--executor", choices=("local", "submitit-local", "slurm"), default="local",
                     help="local: one run after another here (default); submitit-local: submitit jobs here; "
                          "slurm: one SLURM job array")
    run.add_argument("--stop-on-failure", action="store_true", help="stop at the first failing run")
    run.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and report")
    run.add_argument("--poll-s", type=float, default=None,
                     help="seconds between checks while waiting for jobs (default: 1 submitit-local, 30 slurm)")
    submit = parser.add_argument_group("submitit / SLURM resources")
    submit.add_argument("--logs", default=None, help="submitit folder (default OUTPUT/submitit/%%j)")
    submit.add_argument("--job-name", default="mixprompt-sweep")
    submit.add_argument("--partition", default=None)
    submit.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per job (slurm: default 1; submitit-local: the GPUs a job sees, default 0)")
    submit.add_argument("--cpus-per-task", type=int, default=None)
    submit.add_argument("--mem-gb", type=float, default=None)
    submit.add_argument("--timeout-min", type=int, default=24 * 60, help="per job (default 1440)")
    submit.add_argument("--array-parallelism", type=int, default=None,
                        help="jobs running at once (slurm: the array's %%N; submitit-local: default 1)")
    submit.add_argument("--slurm-extra", nargs="+", default=[], metavar="KEY=VALUE",
                        help="further #SBATCH options, e.g. account=abc qos=high constraint=a100")
    submit.add_argument("--slurm-setup", action="append", default=[], metavar="CMD",
                        help="shell line run in the batch script before the job (repeatable)")
    return parser


# ---- input checks

def absolute(path):
    """PATH made absolute against the current folder, as common.sh's absolute() does ($PWD/PATH)."""
    if path.startswith("/"):
        return path
    pwd = os.environ.get("PWD", "")
    try:
        same = bool(pwd) and os.path.samefile(pwd, ".")
    except OSError:
        same = False
    return f"{pwd if same else os.getcwd()}/{path}"


def canonical_trainer(name):
    names = {n.lower(): n for n in METHODS}
    names.update(ALIASES)
    if name.lower() not in names:
        fail(f"unknown trainer {name!r}; known: {', '.join(METHODS)}")
    return names[name.lower()]


def check_values(flag, values, pattern, what):
    for value in values:
        if not pattern.match(value):
            fail(f"{flag} must be {what}, got {value!r}")


def check_settings(args):
    check_values("--shots", args.shots, POSITIVE_INT, "positive integers")
    check_values("--seeds", args.seeds, NON_NEGATIVE_INT, "non-negative integers")
    check_values("--nctx", args.nctx, POSITIVE_INT, "positive integers")
    check_values("--csc", args.csc, re.compile(r"^(True|False)$"), "True or False")
    check_values("--ctp", args.ctp, re.compile(r"^(end|middle|front)$"), "end, middle or front")
    check_values("--ensemble", args.ensemble, re.compile(r"^(True|False)$"), "True or False")
    if args.K is not None:
        check_values("--K", args.K, POSITIVE_INT, "positive integers")
    if "MixPrompt" in args.trainers and not args.K:
        fail("MixPrompt needs --K (sub-prompts per class), e.g. --K 8")
    if args.tag and not SAFE_TAG.match(args.tag):
        fail(f"--tag may hold letters, digits and . _ + - only, got {args.tag!r}")
    for dataset in args.datasets:
        if not (REPO_ROOT / "configs" / "datasets" / f"{dataset}.yaml").is_file():
            fail(f"--datasets: configs/datasets/{dataset}.yaml does not exist")
    for flag, value in (("--array-parallelism", args.array_parallelism), ("--timeout-min", args.timeout_min)):
        if value is not None and value < 1:
            fail(f"{flag} must be at least 1")
    slurm_extra(args.slurm_extra)


def config_path(trainer, cfg):
    return f"configs/trainers/{METHODS[trainer].config_dir}/{cfg}.yaml"


def configs_by_trainer(trainers, cfg_args):
    """{trainer: [CFG, ...]} from --cfg entries CFG (every trainer) and TRAINER=CFG; each file must exist."""
    chosen = {trainer: [] for trainer in trainers}
    for entry in cfg_args:
        name, sep, cfg = entry.rpartition("=")
        targets = [canonical_trainer(name)] if sep else trainers
        if sep and targets[0] not in chosen:
            fail(f"--cfg {entry}: {targets[0]} is not in --trainers")
        for trainer in targets:
            if not (REPO_ROOT / config_path(trainer, cfg)).is_file():
                hint = "" if sep else f" (give it per trainer as TRAINER={cfg})"
                fail(f"--cfg {entry}: {config_path(trainer, cfg)} does not exist for {trainer}{hint}")
            if cfg not in chosen[trainer]:
                chosen[trainer].append(cfg)
    return {trainer: cfgs or [METHODS[trainer].default_cfg] for trainer, cfgs in chosen.items()}


def check_opts(opts, trainers):
    """KEY VALUE pairs; the keys that name the output folder (or move the run) are refused."""
    if len(opts) % 2:
        fail(f"--opts must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    reserved = dict(ALWAYS_RESERVED)
    for trainer in trainers:
        reserved.update(METHODS[trainer].reserved)
    for key in opts[::2]:
        if key in reserved:
            fail(f"set {key} with {reserved[key]}, not in --opts (it names the output folder)")


def dedupe(values):
    return list(dict.fromkeys(values))


# ---- the plan

def variants(trainer, args):
    """(folder suffix, the script's own opts, label) per MixPrompt K / CoOp context setting."""
    if trainer == "MixPrompt":
        return [(f"/k{k}", ["TRAINER.MIXPROMPT.K", k], f" K={k}") for k in args.K]
    if trainer == "CoOp":
        return [(f"/nctx{n}_csc{c}_ctp{p}",
                 ["TRAINER.COOP.N_CTX", n, "TRAINER.COOP.CSC", c, "TRAINER.COOP.CLASS_TOKEN_POSITION", p],
                 f" nctx{n}_csc{c}_ctp{p}")
                for n in args.nctx for c in args.csc for p in args.ctp]
    return [("", [], "")]


def fewshot_runs(trainer, dataset, cfg, args, data, output):
    """run_seeds in scripts/common.sh, for every shots value and variant."""
    runs = []
    for shots in args.shots:
        for suffix, script_opts, label in variants(trainer, args):
            parent = f"{output}/{dataset}/{trainer}/{cfg}{'_' + args.tag if args.tag else ''}_{shots}shots{suffix}"
            for seed in args.seeds:
                run_dir = f"{parent}/seed{seed}"
                argv = [args.python, f"{REPO_ROOT}/train.py", "--root", data, "--seed", seed, "--trainer", trainer,
                        "--dataset-config-file", f"{REPO_ROOT}/configs/datasets/{dataset}.yaml",
                        "--config-file", f"{REPO_ROOT}/{config_path(trainer, cfg)}", "--output-dir", run_dir,
                        SHOTS_KEY, shots, *script_opts, *args.opts]
                runs.append(Run(f"{trainer} {dataset} {cfg} {shots}shots{label} seed {seed}", run_dir, argv,
                                "Finish training"))
    return runs


def zeroshot_runs(dataset, cfg, args, data, output):
    """scripts/zsclip/zeroshot.sh: one evaluation per ENSEMBLE value, no shots, no seeds."""
    runs = []
    for ensemble in args.ensemble:
        name = f"{cfg}{'_ensemble' if ensemble == 'True' else ''}{'_' + args.tag if args.tag else ''}"
        run_dir = f"{output}/ZeroshotCLIP/{name}/{dataset}"
        argv = [args.python, f"{REPO_ROOT}/train.py", "--root", data, "--trainer", "ZeroshotCLIP",
                "--dataset-config-file", f"{REPO_ROOT}/configs/datasets/{dataset}.yaml",
                "--config-file", f"{REPO_ROOT}/{config_path('ZeroshotCLIP', cfg)}", "--output-dir", run_dir,
                "--eval-only", "TRAINER.ZSCLIP.ENSEMBLE", ensemble, *args.opts]
        runs.append(Run(f"ZeroshotCLIP {dataset} {name}", run_dir, argv, "=> result"))
    return runs


def expand(args, cfgs):
    data, output = absolute(args.data), absolute(args.output)
    runs = []
    for trainer in args.trainers:
        for dataset in args.datasets:
            for cfg in cfgs[trainer]:
                if METHODS[trainer].few_shot:
                    runs += fewshot_runs(trainer, dataset, cfg, args, data, output)
                else:
                    runs += zeroshot_runs(dataset, cfg, args, data, output)
    unique = {run.run_dir: run for run in reversed(runs)}  # one run per folder, first occurrence kept
    return [run for run in runs if unique[run.run_dir] is run]


# ---- finished, partial, pending

def log_has_result(path, signal):
    """common.sh's finished(): a line starting with SIGNAL, later followed by "* accuracy: X%"."""
    seen = False
    with open(path, errors="replace") as f:
        for line in f:
            seen = seen or line.startswith(signal)
            if seen and ACCURACY_LINE.match(line):
                return True
    return False


def is_finished(run_dir, signal):
    logs = glob.glob(os.path.join(glob.escape(run_dir), "log.txt*"))
    return any(os.path.isfile(log) and log_has_result(log, signal) for log in sorted(logs))


def set_status(runs):
    for run in runs:
        if is_finished(run.run_dir, run.signal):
            run.status = "finished"
        else:
            run.status = "partial" if os.path.isdir(run.run_dir) else "pending"


# ---- config check

def check_configs(runs):
    """Assemble each distinct config with train.py's setup_cfg: bad --opts stop the sweep before any run."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        import train
        from engine import UserError
    except ImportError as exc:  # e.g. a login node without torch: the jobs' interpreter is --python
        print(f"WARNING: configs not checked, train.py cannot be imported here ({exc}); --no-check hides this",
              file=sys.stderr)
        return

    parser, checked = train.build_parser(), set()
    for run in runs:
        argv = run.argv[2:]
        key = tuple(v for i, v in enumerate(argv) if i == 0 or argv[i - 1] not in ("--seed", "--output-dir"))
        if key in checked:
            continue
        checked.add(key)
        try:
            train.setup_cfg(parser.parse_args(argv))
        except UserError as exc:
            fail(f"{run.label}: {exc}")


# ---- printing

def print_header(args, runs):
    print(f"Sweep: {len(runs)} runs: trainers {' '.join(args.trainers)} x datasets {' '.join(args.datasets)}")
    data = absolute(args.data)
    print(f"  DATA={data}" + ("" if os.path.isdir(data) else "  (WARNING: no such folder here)"))
    print(f"  OUTPUT={absolute(args.output)}")
    print(f"  shots {' '.join(args.shots)}, seeds {' '.join(args.seeds)}"
          + (f", K {' '.join(args.K)}" if args.K else "") + (f", TAG={args.tag}" if args.tag else ""))
    if "ZeroshotCLIP" in args.trainers:
        print("  (ZeroshotCLIP has no shots and no seeds: one evaluation per dataset and config)")
    print(f"  extra options: {' '.join(args.opts) or 'none'}")
    counts = {s: sum(run.status == s for run in runs) for s in ("finished", "partial", "pending")}
    print(f"  {counts['finished']} finished (skipped), {counts['partial']} partial (run again, resuming), "
          f"{counts['pending']} pending; executor: {args.executor}", flush=True)


def print_plan(runs, output):
    from tabulate import tabulate

    rows = [(i, run.status, os.path.relpath(run.run_dir, output),
             "skip: finished" if run.status == "finished" else shlex.join(run.argv))
            for i, run in enumerate(runs, start=1)]
    print(tabulate(rows, headers=("#", "status", "run folder (under OUTPUT)", "command"), tablefmt="simple"))
    print("(dry run: nothing was run)")


def print_summary(done, failures, skipped, output):
    print(f"==> sweep: {done} run(s) done, {len(failures)} failed, {skipped} skipped (finished before).")
    for run, why in failures:
        print(f"    FAILED {run.label}: {why}; output folder: {run.run_dir}")
    if failures:
        print("    Fix the cause and run the same command again: finished runs are skipped, the others resume.")
    print(f"    Results: python scripts/parse_results.py {output}", flush=True)


# ---- executors

def run_local(todo, stop_on_failure):
    """One run after another; returns (runs done, [(run, why)] of the failures, first failing exit status)."""
    done, failures, first_rc = 0, [], 0
    for i, run in enumerate(todo, start=1):
        if run.status == "partial":
            print(f"==> [{i}/{len(todo)}] {run.label}: unfinished run at {run.run_dir}, running it again "
                  "(resumes from its latest checkpoint)", flush=True)
        else:
            print(f"==> [{i}/{len(todo)}] {run.label} -> {run.run_dir}", flush=True)
        rc = subprocess.call(run.argv, cwd=REPO_ROOT)
        done += not rc
        if rc:
            why = f"train.py exit status {rc}" if rc > 0 else f"train.py killed by signal {-rc}"
            print(f"ERROR: {run.label} failed ({why}); output folder: {run.run_dir}.", file=sys.stderr, flush=True)
            failures.append((run, why))
            first_rc = first_rc or (rc if rc > 0 else 128 - rc)
            if stop_on_failure:
                print(f"    --stop-on-failure: the {len(todo) - i} later run(s) were not started.", file=sys.stderr)
                break
    return done, failures, first_rc


def job(argv, run_dir, signal, cwd):
    """What a submitit job runs: train.py in a subprocess, unless the run finished meanwhile."""
    if is_finished(run_dir, signal):
        print(SKIP_MESSAGE.format(run_dir), flush=True)
        return "skipped"
    print(f"==> {shlex.join(argv)}", flush=True)
    rc = subprocess.call(argv, cwd=cwd)
    if rc:
        raise RuntimeError(f"train.py exit status {rc}; output folder: {run_dir}")
    return "done"


def import_submitit():
    try:
        import submitit
    except ImportError:
        fail("the submitit executors need submitit: pip install submitit")
    if __name__ != "__main__" and __name__ in sys.modules:  # imported: pickle job() by value all the same
        import cloudpickle
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return submitit


def slurm_extra(items):
    """{KEY: VALUE} from --slurm-extra KEY=VALUE ... (#SBATCH --KEY=VALUE)."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--slurm-extra takes KEY=VALUE, got {item!r}")
        extra[key] = value
    return extra


def submission_parameters(args, cluster):
    """AutoExecutor.update_parameters arguments from the resource flags."""
    params = {"name": args.job_name, "timeout_min": args.timeout_min, "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb}
    if cluster == "slurm":
        params["gpus_per_node"] = (1 if args.gpus_per_node is None else args.gpus_per_node) or None  # 0: no GPU line
        params.update(slurm_partition=args.partition, slurm_array_parallelism=args.array_parallelism,
                      slurm_additional_parameters=slurm_extra(args.slurm_extra) or None,
                      slurm_setup=args.slurm_setup or None)
    return {key: value for key, value in params.items() if value is not None}


def make_executor(args, cluster):
    submitit = import_submitit()
    folder = args.logs or f"{absolute(args.output)}/submitit/%j"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:
        fail(f"--executor slurm needs SLURM (srun and sbatch on PATH), run it on the cluster ({exc})")
    executor.update_parameters(**submission_parameters(args, cluster))
    return executor


def submit(executor, runs):
    return executor.map_array(job, [r.argv for r in runs], [r.run_dir for r in runs], [r.signal for r in runs],
                              [str(REPO_ROOT)] * len(runs))


def wait_for(jobs, runs, n_before, n_total, poll_s):
    """Report jobs as they end; returns (runs done, [(run, why)] of the failures)."""
    from submitit.helpers import as_completed

    run_of = {id(j): r for j, r in zip(jobs, runs)}
    done, failures = 0, []
    for i, ended in enumerate(as_completed(jobs, poll_frequency=poll_s), start=n_before + 1):
        run = run_of[id(ended)]
        error = ended.exception()
        if error is None:
            print(f"==> [{i}/{n_total}] {ended.result()}: {run.label} (job {ended.job_id})", flush=True)
            done += 1
            continue
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        why = next((line for line in reversed(lines) if "exit status" in line), lines[0])
        print(f"ERROR: [{i}/{n_total}] {run.label} failed: {why} (job {ended.job_id}, log: {ended.paths.stdout})",
              file=sys.stderr, flush=True)
        failures.append((run, why))
    return done, failures


def run_submitit_local(args, todo):
    """Waves of at most --array-parallelism jobs (default 1) on this machine, each waited for."""
    executor = make_executor(args, "local")
    width = args.array_parallelism or 1
    done, failures = 0, []
    for start in range(0, len(todo), width):
        wave = todo[start:start + width]
        jobs = submit(executor, wave)
        print(f"==> submitted {len(jobs)} submitit job(s) {' '.join(j.job_id for j in jobs)}; logs in "
              f"{jobs[0].paths.folder.parent}", flush=True)
        wave_done, wave_failures = wait_for(jobs, wave, start, len(todo), args.poll_s or 1)
        done, failures = done + wave_done, failures + wave_failures
        if failures and args.stop_on_failure:
            print(f"    --stop-on-failure: {len(todo) - start - len(wave)} later run(s) were not started.",
                  file=sys.stderr)
            break
    return done, failures


def run_slurm(args, todo):
    """One job array; waited for with --wait, else (None, []) right after submission."""
    executor = make_executor(args, "slurm")
    jobs = submit(executor, todo)
    print(f"==> submitted {len(jobs)} run(s) to SLURM as job {jobs[0].job_id.split('_')[0]}; logs in "
          f"{jobs[0].paths.folder.parent}", flush=True)
    for j, run in zip(jobs, todo):
        print(f"    {j.job_id}  {run.run_dir}")
    if not args.wait:
        print("    Follow them with squeue. When they have ended, run the same command again: finished runs are "
              "skipped, unfinished ones are submitted again (not while they are queued or running: that would "
              "run them twice).", flush=True)
        return None, []
    return wait_for(jobs, todo, 0, len(todo), args.poll_s or 30)


def execute(args, todo):
    """(runs done or None when not waited for, failures, exit status of the first failure or 0)."""
    if args.executor == "local":
        return run_local(todo, args.stop_on_failure)
    if args.executor == "submitit-local":
        return (*run_submitit_local(args, todo), 0)
    return (*run_slurm(args, todo), 0)


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.trainers = dedupe(canonical_trainer(t) for t in args.trainers)
    args.datasets, args.shots, args.seeds = dedupe(args.datasets), dedupe(args.shots), dedupe(args.seeds)
    args.K = dedupe(args.K) if args.K else args.K
    check_settings(args)
    cfgs = configs_by_trainer(args.trainers, args.cfg)
    check_opts(args.opts, args.trainers)
    runs = expand(args, cfgs)
    set_status(runs)
    print_header(args, runs)
    todo = [run for run in runs if run.status != "finished"]
    if todo and not args.no_check:
        check_configs(todo)
    if args.dry_run:
        print_plan(runs, absolute(args.output))
        return 0
    for run in runs:
        if run.status == "finished":
            print(SKIP_MESSAGE.format(run.run_dir))
    if not todo:
        print("==> sweep: nothing to run, every run is finished.")
        return 0
    done, failures, rc = execute(args, todo)
    if done is None:
        return 0
    print_summary(done, failures, len(runs) - len(todo), absolute(args.output))
    return (rc or 1) if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again: finished runs are skipped, the others resume.",
              file=sys.stderr)
        sys.exit(130)
