"""Speed and memory of the trainers, measured in one run: step time, peak memory, evaluation time, ratios.

    python scripts/bench.py                       # tiny seeded CLIP on CPU, generated data (a few minutes)
    python scripts/bench.py --backbone ViT-B/16 --device cuda --classes 196 --json bench.json

Every figure comes from the real trainers, built the way ``train.py`` builds them, on generated Stanford
Cars data of the requested shape. Sections (docs/performance.md):

1. text encoding at CoOp's prompt length: trimmed after the longest EOT vs padded to 77 (time, max |diff|);
2. per method: one training step (forward, backward, optimiser) on a fixed batch, its peak memory, and a
   full evaluation of the test split: ZeroshotCLIP (the floor), CoOp, CoCoOp, MixPrompt in feature and
   token space for each K;
3. a large label space in token space (default C 2000, K 32): unchunked vs chunked + checkpointed vs class
   sampling, peak memory per step;
4. the image-feature cache: a MixPrompt (feature space) epoch with and without FEATURE_CACHE_VIEWS.

Times are medians over ``--reps`` after ``--warmup`` calls. Peak memory: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``) above the memory in use before the call; on CPU (Linux) the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set before the call, with
large allocations returned to the system on free (glibc mmap threshold fixed at 128 KiB) so that it tracks
live tensors. Numbers from a shared machine are noisy; ratios within one run are what to compare.
"""
import argparse
import contextlib
import ctypes
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")  # the trainers' progress bars would drown the bench's own lines

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from trainers import registry  # noqa: E402  (every trainer: its config node, default config, bench rows)

DEFAULT_METHODS = ("ZeroshotCLIP", "CoOp", "CoCoOp", "MixPrompt")
AUTO_ESTIMATE_PROMPTS = 16_000
TARGETS = {  # issue 8's bars, checked (not asserted) in the summary
    "trim_speedup": (">=", 2.0),
    "trim_max_abs_diff": ("<=", 1e-5),
    "eval_ratio_mixprompt_vs_zeroshot": ("<=", 1.2),
    "step_ratio_mixprompt_feature_vs_coop": ("<=", 0.7),
    "memory_ratio_best_vs_unchunked": ("<=", 0.25),
    "cache_epoch_speedup": (">=", 5.0),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="tiny", help='"tiny" (seeded random tiny CLIP, written to the work '
                   "folder) or any MODEL.BACKBONE.NAME (ViT-B/16, RN50, a file)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prec", default="fp32", help="TRAINER.<NAME>.PREC of every trainer (fp32, fp16, amp, bf16)")
    p.add_argument("--classes", type=int, default=196, help="C of sections 1, 2 and 4 (Stanford Cars: 196)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="TRAINER",
                   help=f"trainers of section 2 (any of {' '.join(registry.trainer_names())}); default: "
                   f"{' '.join(DEFAULT_METHODS)}")
    p.add_argument("--K", type=int, nargs="+", default=[8, 32], help="sub-prompts per class in section 2")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--n-ctx", type=int, default=16, help="context tokens of CoOp, CoCoOp and token-space MixPrompt")
    p.add_argument("--test-per-class", type=int, default=1, help="test images per class (evaluation set size)")
    p.add_argument("--shots", type=int, default=4, help="training images per class of the cache epoch (section 4)")
    p.add_argument("--large-classes", type=int, default=2000, help="C of section 3")
    p.add_argument("--large-K", type=int, default=32, help="K of section 3")
    p.add_argument("--chunk", type=int, default=1024, help="ENCODE_CHUNK of section 3's chunked runs")
    p.add_argument("--unchunked", choices=("auto", "measure", "estimate"), default="auto",
                   help="section 3's unchunked step: measure it, or estimate it from the same step at 1/8 of the\n"
                   f"classes x 8; auto: estimate on CPU above {AUTO_ESTIMATE_PROMPTS} prompts (it took 20.8 GiB\n"
                   "at C 2000 K 32 with the tiny CLIP), measure on CUDA (estimate if it runs out of memory)")
    p.add_argument("--class-sample", type=int, default=64, help="CLASS_SAMPLE of section 3's sampled run")
    p.add_argument("--cache-views", type=int, default=4, help="FEATURE_CACHE_VIEWS of section 4")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is steadier on a "
                   "busy machine)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="repetitions (median) of steps and evaluations")
    p.add_argument("--sections", nargs="+", choices=("text", "methods", "large", "cache"),
                   default=["text", "methods", "large", "cache"])
    p.add_argument("--work-dir", help="where the generated data and weights go (default: a temporary folder)")
    p.add_argument("--json", help="also write all figures to this JSON file")
    return p


# --------------------------------------------------------------------------------------- measurement
class MemoryMeter:
    """Peak memory of a call above the memory in use before it (see the module docstring)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.libc = None
        if self.device.type == "cpu":
            if not os.path.exists("/proc/self/clear_refs"):
                raise SystemExit("ERROR: CPU peak memory needs Linux's /proc/self/clear_refs; run with --device cuda")
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: big blocks mmapped, returned on free

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def measure(self, fn):
        """(result of fn(), peak bytes above the start)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            result = fn()
            torch.cuda.synchronize()
            return result, torch.cuda.max_memory_allocated() - start
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident set
        start = self._status("VmRSS:")
        result = fn()
        return result, max(self._status("VmHWM:") - start, 0)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(fn, device, meter, warmup, reps):
    """(median seconds, max peak bytes) of ``fn`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, peaks = [], []
    for _ in range(reps):
        seconds, peak = meter.measure(lambda: timed(fn, device))
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), max(peaks)


def progress(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- workspace
class Workspace:
    """Generated data (one Stanford Cars root per shape) and weights, and trainers built like train.py's."""

    def __init__(self, args, folder):
        self.args = args
        self.folder = Path(folder)
        self.device = torch.device(args.device)
        self.backbone = args.backbone
        if args.backbone == "tiny":
            from trainers.clip import save_tiny_clip

            self.backbone = str(save_tiny_clip(self.folder / "tiny_clip.pt"))
        self.roots = {}
        self.log = open(self.folder / "trainers.log", "a")

    def data_root(self, classes, shots, test_per_class):
        """A generated root with at least ``shots`` training images per class after the train/val split."""
        train_per_class = max(3, shots + 2)  # the release's split moves 20% of each class to val
        key = (classes, train_per_class, test_per_class)
        if key not in self.roots:
            from datasets.fake import write_fake_stanford_cars

            root = self.folder / f"cars_c{classes}_tr{train_per_class}_te{test_per_class}"
            if not (root / "stanford_cars").exists():
                progress(f"  generating Stanford Cars data: {classes} classes x ({train_per_class} train, "
                         f"{test_per_class} test)")
                with contextlib.redirect_stdout(io.StringIO()):
                    write_fake_stanford_cars(root, classes=classes, train_per_class=train_per_class,
                                             test_per_class=test_per_class, seed=0, image_size=32)
            self.roots[key] = str(root)
        return self.roots[key]

    def trainer(self, name, root, shots, opts=()):
        from engine import build_trainer, set_random_seed
        from trainers.cli import build_parser, setup_cfg

        trainer = registry.get_trainer(name)
        node = trainer.cfg_node
        argv = ["--root", root, "--trainer", name, "--seed", "1",
                "--dataset-config-file", str(REPO_ROOT / "configs/datasets/stanford_cars.yaml"),
                "--config-file", str(REPO_ROOT / registry.config_path(trainer, trainer.default_config)),
                "--output-dir", str(self.folder / "out"),
                "MODEL.BACKBONE.NAME", self.backbone, "DATASET.NUM_SHOTS", str(shots),
                "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", str(self.args.batch),
                "DATALOADER.TEST.BATCH_SIZE", "100", "USE_CUDA", str(self.device.type == "cuda"),
                f"TRAINER.{node}.PREC", self.args.prec, *opts]
        with contextlib.redirect_stdout(self.log):
            cfg = setup_cfg(build_parser().parse_args(argv))
            set_random_seed(cfg.SEED)
            return build_trainer(cfg)

    def quiet(self):
        return contextlib.redirect_stdout(self.log)


def training_step(ws, trainer):
    """A function running one training step on a fixed batch (no scheduler step, no log line)."""
    batch = next(iter(trainer.train_loader_x))
    trainer.epoch, trainer.batch_idx = 0, 0
    trainer.num_batches = len(trainer.train_loader_x) + 1  # never the epoch's last batch: lr unchanged
    trainer.set_model_mode("train")
    with ws.quiet():
        trainer.before_epoch()  # MixPrompt's balanced E-step (once per epoch, not part of a step)

    def step():
        with ws.quiet():
            trainer.forward_backward(batch)
    return step


# --------------------------------------------------------------------------------------- sections
def bench_text(ws, args, meter):
    """Section 1: CoOp's C prompts through the text encoder, trimmed vs padded to 77 (forward, no grad)."""
    root = ws.data_root(args.classes, 1, args.test_per_class)
    trainer = ws.trainer("CoOp", root, 1, registry.get_trainer("CoOp").context_opts(args.n_ctx))
    model = trainer.model
    encoder = model.text_encoder
    prompts, tokens = model.prompt_learner().detach(), model.prompt_learner.tokens.tokenized_prompts
    results = {}
    for trim in (True, False):
        encoder.trim_padding = trim
        with torch.no_grad():
            features = encoder(prompts, tokens)
            seconds, peak = measure(lambda: encoder(prompts, tokens), ws.device, meter, args.warmup, args.reps)
        results["trimmed" if trim else "padded"] = {"seconds": seconds, "peak_bytes": peak, "features": features}
    encoder.trim_padding = True
    eot = tokens.argmax(-1)
    diff = (results["trimmed"]["features"].float() - results["padded"]["features"].float()).abs().max().item()
    return {
        "prompts": len(tokens), "tokens_trimmed": int(eot.max()) + 1, "tokens_padded": tokens.shape[1],
        "trimmed_seconds": results["trimmed"]["seconds"], "padded_seconds": results["padded"]["seconds"],
        "trimmed_peak_bytes": results["trimmed"]["peak_bytes"], "padded_peak_bytes": results["padded"]["peak_bytes"],
        "trim_speedup": results["padded"]["seconds"] / results["trimmed"]["seconds"], "trim_max_abs_diff": diff,
    }


def method_variants(args):
    """(row name, trainer, opts) of section 2."""
    rows = []
    for name in args.methods:
        trainer = registry.get_trainer(name)
        rows += [(label, trainer.__name__, opts) for label, opts in trainer.bench_variants(args.K, args.n_ctx)]
    return rows


def bench_methods(ws, args, meter):
    """Section 2: one training step and one full evaluation per method."""
    shots = max(1, -(-args.batch // args.classes))  # enough training images for one full batch
    root = ws.data_root(args.classes, shots, args.test_per_class)
    rows = []
    for label, name, opts in method_variants(args):
        progress(f"  {label}")
        trainer = ws.trainer(name, root, shots, opts)
        row = {"method": label, "step_seconds": None, "step_peak_bytes": None}
        if registry.get_trainer(name).few_shot:
            row["step_seconds"], row["step_peak_bytes"] = measure(training_step(ws, trainer), ws.device, meter,
                                                                  args.warmup, args.reps)

        def evaluate():
            with ws.quiet():
                trainer.test()
        row["eval_seconds"], row["eval_peak_bytes"] = measure(evaluate, ws.device, meter, min(args.warmup, 1),
                                                              max(1, args.reps))
        row["test_images"] = len(trainer.dm.dataset.test)
        rows.append(row)
        del trainer
    return rows


def bench_large(ws, args, meter):
    """Section 3: token-space MixPrompt at a large C x K, peak memory of one training step per setting."""
    k = args.large_K
    root = ws.data_root(args.large_classes, 1, 1)
    base = ["TRAINER.MIXPROMPT.K", str(k), "TRAINER.MIXPROMPT.OFFSET_SPACE", "token",
            "TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.BALANCE", "none"]
    settings = [
        ("unchunked", ["TRAINER.MIXPROMPT.ENCODE_CHUNK", "0"]),
        (f"chunk {args.chunk}", ["TRAINER.MIXPROMPT.ENCODE_CHUNK", str(args.chunk)]),
        (f"chunk {args.chunk} + checkpointing", ["TRAINER.MIXPROMPT.ENCODE_CHUNK", str(args.chunk),
                                                  "TRAINER.MIXPROMPT.ENCODE_CHECKPOINT", "True"]),
        (f"class sample {args.class_sample}", ["TRAINER.MIXPROMPT.CLASS_SAMPLE", str(args.class_sample)]),
        (f"class sample {args.class_sample} + chunk {args.chunk} + checkpointing",
         ["TRAINER.MIXPROMPT.CLASS_SAMPLE", str(args.class_sample), "TRAINER.MIXPROMPT.ENCODE_CHUNK",
          str(args.chunk), "TRAINER.MIXPROMPT.ENCODE_CHECKPOINT", "True"]),
    ]
    rows = []
    for label, opts in settings:
        progress(f"  C {args.large_classes} K {k}: {label}")
        trainer = ws.trainer("MixPrompt", root, 1, registry.get_trainer("MixPrompt").context_opts(args.n_ctx) + base + opts)
        row = {"setting": label, "prompts_per_step": args.large_classes * k}
        if "class sample" in label:
            row["prompts_per_step"] = min(args.class_sample, args.large_classes) * k
        if label == "unchunked" and estimate_unchunked_step(args, ws.device, row["prompts_per_step"]):
            row.update(estimate_unchunked(ws, args, meter, base + opts))
        else:
            try:
                row["step_seconds"], row["step_peak_bytes"] = measure(training_step(ws, trainer), ws.device,
                                                                      meter, 0, 1)
                row["estimated"] = False
            except torch.OutOfMemoryError:  # CUDA; estimate from 1/8 of the classes
                row.update(estimate_unchunked(ws, args, meter, base + opts))
        rows.append(row)
        del trainer
    return rows


def estimate_unchunked_step(args, device, prompts):
    if args.unchunked == "auto":
        return device.type == "cpu" and prompts > AUTO_ESTIMATE_PROMPTS
    return args.unchunked == "estimate"


def estimate_unchunked(ws, args, meter, opts):
    """Peak memory of a step that does not fit, from the same step at 1/8 of the classes, times 8 (the
    text side's activations are linear in the number of prompts)."""
    classes = max(1, args.large_classes // 8)
    root = ws.data_root(classes, 1, 1)
    trainer = ws.trainer("MixPrompt", root, 1, registry.get_trainer("MixPrompt").context_opts(args.n_ctx) + opts)
    seconds, peak = measure(training_step(ws, trainer), ws.device, meter, 0, 1)
    scale = args.large_classes / classes
    return {"step_seconds": seconds * scale, "step_peak_bytes": int(peak * scale), "estimated": True}


def bench_cache(ws, args, meter):
    """Section 4: a MixPrompt (feature space, K = first --K) training epoch with and without the cache."""
    root = ws.data_root(args.classes, args.shots, args.test_per_class)
    k = args.K[0]
    rows = []
    for views in (0, args.cache_views):
        label = f"FEATURE_CACHE_VIEWS {views}" if views else "no cache (image encoder every batch)"
        progress(f"  MixPrompt feature K{k} epoch: {label}")
        build_start = time.perf_counter()
        trainer = ws.trainer("MixPrompt", root, args.shots, ["TRAINER.MIXPROMPT.K", str(k),
                             "TRAINER.MIXPROMPT.INIT", "random", "TRAINER.MIXPROMPT.FEATURE_CACHE_VIEWS", str(views)])
        build_seconds = time.perf_counter() - build_start
        trainer.max_epoch, trainer.start_epoch = 10, 0

        def epoch():
            with ws.quiet():
                trainer.epoch = 0
                trainer.set_model_mode("train")
                trainer.before_epoch()
                trainer.run_epoch()
        seconds, peak = measure(epoch, ws.device, meter, args.warmup, args.reps)
        rows.append({"setting": label, "epoch_seconds": seconds, "epoch_peak_bytes": peak,
                     "build_seconds": build_seconds, "batches": len(trainer.train_loader_x)})
        del trainer
    return rows


# --------------------------------------------------------------------------------------- report
def mib(value):
    return "-" if value is None else f"{value / 2 ** 20:.1f}"


def ms(value):
    return "-" if value is None else f"{value * 1000:.1f}"


def ratios(results):
    out = {}
    text = results.get("text")
    if text:
        out["trim_speedup"] = text["trim_speedup"]
        out["trim_max_abs_diff"] = text["trim_max_abs_diff"]
    methods = {row["method"]: row for row in results.get("methods", [])}
    k = results["args"]["K"][0]
    zs, coop, feature = methods.get("ZeroshotCLIP"), methods.get("CoOp"), methods.get(f"MixPrompt feature K{k}")
    token = methods.get(f"MixPrompt token K{k}")
    if zs and feature:
        out["eval_ratio_mixprompt_vs_zeroshot"] = feature["eval_seconds"] / zs["eval_seconds"]
    if zs and token:
        out["eval_ratio_mixprompt_token_vs_zeroshot"] = token["eval_seconds"] / zs["eval_seconds"]
    if coop and feature:
        out["step_ratio_mixprompt_feature_vs_coop"] = feature["step_seconds"] / coop["step_seconds"]
    large = results.get("large")
    if large and large[0]["step_peak_bytes"]:
        best = min(row["step_peak_bytes"] for row in large[1:])
        out["memory_ratio_best_vs_unchunked"] = best / large[0]["step_peak_bytes"]
    cache = results.get("cache")
    if cache:
        out["cache_epoch_speedup"] = cache[0]["epoch_seconds"] / cache[1]["epoch_seconds"]
    return out


def render(results):
    lines = []
    args = results["args"]
    lines.append(f"device {args['device']} ({results['device_name']}), backbone {results['backbone']}, "
                 f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {args['prec']}")
    text = results.get("text")
    if text:
        lines.append(f"\n1. Text encoding, {text['prompts']} CoOp prompts (N_CTX {args['n_ctx']}), forward")
        lines.append(tabulate([
            ["trimmed after the longest EOT", text["tokens_trimmed"], ms(text["trimmed_seconds"]),
             mib(text["trimmed_peak_bytes"])],
            ["padded to 77", text["tokens_padded"], ms(text["padded_seconds"]), mib(text["padded_peak_bytes"])],
        ], headers=["encoding", "tokens", "ms", "peak MiB"]))
    if results.get("methods"):
        lines.append(f"\n2. Methods at C {args['classes']}, batch {args['batch']}")
        lines.append(tabulate([[r["method"], ms(r["step_seconds"]), mib(r["step_peak_bytes"]), ms(r["eval_seconds"]),
                                r["test_images"]] for r in results["methods"]],
                              headers=["method", "train step ms", "step peak MiB", "eval ms", "test images"]))
    if results.get("large"):
        lines.append(f"\n3. Token-space MixPrompt at C {args['large_classes']}, K {args['large_K']}, one step")
        lines.append(tabulate([[r["setting"], r["prompts_per_step"], ms(r["step_seconds"]), mib(r["step_peak_bytes"]),
                                "estimate" if r["estimated"] else "measured"] for r in results["large"]],
                              headers=["setting", "prompts encoded", "step ms", "step peak MiB", ""]))
    if results.get("cache"):
        lines.append(f"\n4. MixPrompt feature-space epoch (K {args['K'][0]}, {args['shots']} shots)")
        lines.append(tabulate([[r["setting"], r["batches"], ms(r["epoch_seconds"]), mib(r["epoch_peak_bytes"]),
                                f"{r['build_seconds']:.1f}"] for r in results["cache"]],
                              headers=["setting", "batches", "epoch ms", "epoch peak MiB", "build s (incl. cache)"]))
    lines.append("\nRatios (measured in this run)")
    rows = []
    for name, value in results["ratios"].items():
        target = TARGETS.get(name)
        verdict = "-"
        if target:
            op, bar = target
            verdict = ("meets" if (value >= bar if op == ">=" else value <= bar) else "misses") + f" {op} {bar:g}"
        rows.append([name, f"{value:.3g}", verdict])
    lines.append(tabulate(rows, headers=["ratio", "value", "target"]))
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ERROR: --device cuda but torch sees no CUDA device")
    for name in ("classes", "batch", "n_ctx", "reps", "large_classes", "large_K", "chunk", "shots"):
        if getattr(args, name) < 1:
            raise SystemExit(f"ERROR: --{name.replace('_', '-')} must be >= 1")
    for name in args.methods:
        try:
            registry.get_trainer(name)
        except KeyError:
            raise SystemExit(f"ERROR: --methods: unknown trainer {name!r}; known: {' '.join(registry.trainer_names())}")
    if args.threads:
        torch.set_num_threads(args.threads)
    meter = MemoryMeter(args.device)
    with contextlib.ExitStack() as stack:
        folder = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="mixprompt-bench-"))
        os.makedirs(folder, exist_ok=True)
        ws = Workspace(args, folder)
        results = {"args": vars(args), "backbone": args.backbone, "device_name": device_name(args.device)}
        sections = {"text": bench_text, "methods": bench_methods, "large": bench_large, "cache": bench_cache}
        for index, name in enumerate(("text", "methods", "large", "cache"), 1):
            if name in args.sections:
                progress(f"[{index}/4] {name}")
                results[name] = sections[name](ws, args, meter)
        results["ratios"] = ratios(results)
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nWrote {args.json}")
    return 0


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{os.cpu_count()} CPU cores"


if __name__ == "__main__":
    sys.exit(main())
