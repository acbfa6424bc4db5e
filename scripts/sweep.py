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

The trainers, their default CFG and the flags that name their run folders (``--K`` for MixPrompt,
``--nctx --csc --ctp`` for CoOp, ``--ensemble`` for ZeroshotCLIP, and whatever a new trainer declares) come
from the trainers' own declarations (``trainers/registry.py``); the layout and the finished rule from
``trainers/runs.py``. A finished run (its ``result.json`` matches the run) is skipped with CoOp's message; an
unfinished one is run again into its folder, where ``train.py`` resumes from its latest checkpoint.

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
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainers import registry, runs as run_layout  # noqa: E402
from trainers.runs import SKIP_MESSAGE  # noqa: E402

POSITIVE_INT = re.compile(r"^[1-9][0-9]*$")
NON_NEGATIVE_INT = re.compile(r"^[0-9]+$")
SAFE_TAG = re.compile(r"^[A-Za-z0-9.+-][A-Za-z0-9_.+-]*$")
SHOTS_KEY = "DATASET.NUM_SHOTS"
# keys the sweep sets from its own flags for every trainer: in --opts they would move or mislabel the run
ALWAYS_RESERVED = (("SEED", "--seeds"), ("OUTPUT_DIR", "--output"), ("DATASET.ROOT", "--data"))


def variant_flags():
    """{flag: [VariantKey, ...]} over every registered trainer, in registration order."""
    flags = {}
    for trainer in registry.all_trainers():
        for spec in trainer.variant_keys:
            flags.setdefault(spec.flag, []).append(spec)
    return flags


@dataclass
class Run:
    label: str
    run_dir: str
    argv: list
    expected: dict = field(default_factory=dict)  # what its record must say (trainers.runs.expected_run)
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
                      help=f"any of {' '.join(registry.trainer_names())} (or the scripts' folder names: zsclip, ...)")
    grid.add_argument("--datasets", nargs="+", required=True, metavar="DATASET",
                      help="names of configs/datasets/<DATASET>.yaml")
    grid.add_argument("--shots", nargs="+", default=["16"], help="training images per class (default 16)")
    grid.add_argument("--seeds", nargs="+", default=["1", "2", "3"], help="one run each (default 1 2 3)")
    grid.add_argument("--cfg", nargs="+", default=[], metavar="[TRAINER=]CFG",
                      help="configs/trainers/<Trainer>/<CFG>.yaml (zero-shot: a CoOp config); CFG alone applies "
                           "to every trainer; default: each script's default")
    grid.add_argument("--tag", default="", help="variant name in the config folder: <CFG>_<TAG>_<SHOTS>shots")
    for flag, specs in variant_flags().items():
        owners = ", ".join(f"{s.key} ({s.help}; default {s.default or 'none: required'})" for s in specs)
        grid.add_argument(flag, nargs="+", default=None, dest=dest(flag), help=f"sets {owners}")
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


def dest(flag):
    return "variant_" + flag.lstrip("-").replace("-", "_")


def canonical_trainer(name):
    try:
        return registry.get_trainer(name).__name__
    except KeyError:
        fail(f"unknown trainer {name!r}; known: {', '.join(registry.trainer_names())}")


def check_values(flag, values, pattern, what):
    for value in values:
        if not pattern.match(value):
            fail(f"{flag} must be {what}, got {value!r}")


def check_settings(args):
    check_values("--shots", args.shots, POSITIVE_INT, "positive integers")
    check_values("--seeds", args.seeds, NON_NEGATIVE_INT, "non-negative integers")
    for flag, specs in variant_flags().items():
        for value in getattr(args, dest(flag)) or []:
            for spec in specs:
                if not spec.check(value):
                    fail(f"{flag} must be {spec.what}, got {value!r}")
    for trainer in args.trainers:
        for spec in registry.get_trainer(trainer).variant_keys:
            if spec.default is None and not getattr(args, dest(spec.flag)):
                fail(f"{trainer} needs {spec.flag} ({spec.key}: {spec.help}), e.g. {spec.flag} 8")
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
    return registry.config_path(registry.get_trainer(trainer), cfg)


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
    return {trainer: cfgs or [registry.get_trainer(trainer).default_config] for trainer, cfgs in chosen.items()}


def check_opts(opts, trainers):
    """KEY VALUE pairs; the keys that name the output folder (or move the run) are refused."""
    if len(opts) % 2:
        fail(f"--opts must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    reserved = dict(ALWAYS_RESERVED)
    for trainer in map(registry.get_trainer, trainers):
        if trainer.few_shot:
            reserved[SHOTS_KEY] = "--shots"
        reserved.update((spec.key, spec.flag) for spec in trainer.variant_keys)
    for key in opts[::2]:
        if key in reserved:
            fail(f"set {key} with {reserved[key]}, not in --opts (it names the output folder)")


def dedupe(values):
    return list(dict.fromkeys(values))


# ---- the plan

def variants(trainer, args):
    """[{key: value}] over the product of the trainer's variant flags (a flag not given: its default)."""
    specs = registry.get_trainer(trainer).variant_keys
    values = [getattr(args, dest(spec.flag)) or [spec.default] for spec in specs]
    return [dict(zip((spec.key for spec in specs), combo)) for combo in itertools.product(*values)]


def variant_label(trainer, variant):
    return "".join(f" {spec.flag.lstrip('-')}={variant[spec.key]}" for spec in registry.get_trainer(trainer).variant_keys)


def trainer_runs(trainer, dataset, cfg, args, data, output):
    """Every run of one trainer, dataset and config: shots x variants x seeds (evaluation-only trainers:
    variants only, no shots and no seeds)."""
    few_shot = registry.get_trainer(trainer).few_shot
    cfg_name = f"{cfg}{'_' + args.tag if args.tag else ''}"
    out = []
    for shots, variant, seed in itertools.product(args.shots if few_shot else [None], variants(trainer, args),
                                                  args.seeds if few_shot else [None]):
        run_dir = run_layout.run_dir(output, trainer, dataset, cfg, variant, shots, seed, args.tag)
        argv = [args.python, f"{REPO_ROOT}/train.py", "--root", data,
                *(["--seed", seed] if few_shot else []), "--trainer", trainer,
                "--dataset-config-file", f"{REPO_ROOT}/configs/datasets/{dataset}.yaml",
                "--config-file", f"{REPO_ROOT}/{config_path(trainer, cfg)}", "--output-dir", run_dir,
                *([SHOTS_KEY, shots] if few_shot else ["--eval-only"]),
                *itertools.chain.from_iterable(variant.items()), *args.opts]
        label = f"{trainer} {dataset} {cfg_name}" + (f" {shots}shots" if few_shot else "") \
            + variant_label(trainer, variant) + (f" seed {seed}" if few_shot else "")
        out.append(Run(label, run_dir, argv, run_layout.expected_run(trainer, dataset, cfg, variant, shots, seed)))
    return out


def expand(args, cfgs):
    data, output = absolute(args.data), absolute(args.output)
    planned = []
    for trainer in args.trainers:
        for dataset in args.datasets:
            for cfg in cfgs[trainer]:
                planned += trainer_runs(trainer, dataset, cfg, args, data, output)
    unique = {run.run_dir: run for run in reversed(planned)}  # one run per folder, first occurrence kept
    return [run for run in planned if unique[run.run_dir] is run]


# ---- finished, partial, pending

def set_status(planned):
    for run in planned:
        try:
            run.status = run_layout.run_status(run.run_dir, run.expected)
        except run_layout.RunRecordError as exc:
            fail(str(exc))


# ---- config check

def check_configs(runs):
    """Assemble each distinct config with train.py's setup_cfg: bad --opts stop the sweep before any run."""
    from engine import UserError
    from trainers.cli import build_parser, setup_cfg

    parser, checked = build_parser(), set()
    for run in runs:
        argv = run.argv[2:]
        key = tuple(v for i, v in enumerate(argv) if i == 0 or argv[i - 1] not in ("--seed", "--output-dir"))
        if key in checked:
            continue
        checked.add(key)
        try:
            setup_cfg(parser.parse_args(argv))
        except UserError as exc:
            fail(f"{run.label}: {exc}")


# ---- printing

def print_header(args, runs):
    print(f"Sweep: {len(runs)} runs: trainers {' '.join(args.trainers)} x datasets {' '.join(args.datasets)}")
    data = absolute(args.data)
    print(f"  DATA={data}" + ("" if os.path.isdir(data) else "  (WARNING: no such folder here)"))
    print(f"  OUTPUT={absolute(args.output)}")
    given = [f"{flag} {' '.join(getattr(args, dest(flag)))}" for flag in variant_flags() if getattr(args, dest(flag))]
    print(f"  shots {' '.join(args.shots)}, seeds {' '.join(args.seeds)}"
          + "".join(f", {g}" for g in given) + (f", TAG={args.tag}" if args.tag else ""))
    for trainer in args.trainers:
        if not registry.get_trainer(trainer).few_shot:
            print(f"  ({trainer} has no shots and no seeds: one evaluation per dataset and config)")
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


def job(argv, run_dir, expected, cwd):
    """What a submitit job runs: train.py in a subprocess, unless the run finished meanwhile. (Pickled by
    value: it imports the run rules itself, from the repository ``cwd``.)"""
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from trainers.runs import is_finished

    if is_finished(run_dir, expected):
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
    return executor.map_array(job, [r.argv for r in runs], [r.run_dir for r in runs], [r.expected for r in runs],
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
    for flag in variant_flags():
        values = getattr(args, dest(flag))
        setattr(args, dest(flag), dedupe(values) if values else values)
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
