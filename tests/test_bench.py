"""scripts/bench.py through its command line at toy shapes: every section runs and reports its figures.

Timings are printed by the benchmark, never asserted here; only exactness and structure are."""
import importlib.util
import json
import statistics
import subprocess
import sys

from conftest import REPO_ROOT


def load_bench():
    """scripts/bench.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_runs_every_section_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--classes", "6", "--K", "2", "--batch", "8", "--n-ctx", "4",
         "--large-classes", "12", "--large-K", "2", "--chunk", "8", "--class-sample", "3", "--shots", "2",
         "--cache-views", "2", "--reps", "1", "--warmup", "0", "--threads", "1", "--work-dir", str(tmp_path / "w"),
         "--sections", "text", "methods", "large", "cache", "real", "--real-backbone", "tiny", "--real-classes", "3",
         "--real-shots", "2", "--real-test-per-class", "1", "--real-K", "2", "--real-rounds", "2",
         "--real-min-epoch-time", "0.2", "--json", str(out)],  # section 5: every default row
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["text"]["trim_max_abs_diff"] <= 1e-5
    assert results["text"]["tokens_trimmed"] < results["text"]["tokens_padded"] == 77
    methods = [row["method"] for row in results["methods"]]
    assert methods == ["ZeroshotCLIP", "CoOp", "CoCoOp", "MixPrompt feature K2", "MixPrompt token K2"]
    assert all(row["eval_seconds"] > 0 for row in results["methods"])
    assert all(row["step_seconds"] > 0 for row in results["methods"][1:])
    large = {row["setting"]: row for row in results["large"]}
    assert large["unchunked"]["prompts_per_step"] == 24 and large["class sample 3"]["prompts_per_step"] == 6
    assert [row["batches"] for row in results["cache"]] == [1, 1]  # same epoch length with and without cache
    assert set(results["ratios"]) >= {"trim_speedup", "eval_ratio_mixprompt_vs_zeroshot",
                                      "step_ratio_mixprompt_feature_vs_coop", "memory_ratio_best_vs_unchunked",
                                      "cache_epoch_speedup"}
    for name in ("trim_speedup", "eval_ratio_mixprompt_vs_zeroshot", "cache_epoch_speedup"):
        assert name in result.stdout  # the printed table names every ratio
    real = results["real"]
    assert real["rows"] == ["ZeroshotCLIP", "LinearProbeCLIP", "CoOp", "CoOp (reference way)", "CoCoOp",
                            "MixPrompt feature", "MixPrompt token"] and len(real["rounds"]) == 2
    first = real["rounds"][0]
    assert first["ZeroshotCLIP"]["test"] > 0 and "epoch" not in first["ZeroshotCLIP"]
    assert first["LinearProbeCLIP"]["train"] > 0 and first["LinearProbeCLIP"]["test"] > 0
    cocoop = first["CoCoOp"]  # batch 1: its epoch is estimated from its timed steps
    assert cocoop["epoch_estimated"] and cocoop["epoch"] == cocoop["step"] * cocoop["batches"]
    for label in ("CoOp", "CoOp (reference way)", "MixPrompt feature", "MixPrompt token"):
        row = first[label]
        assert row["startup"] > 0 and row["step"] > 0 and row["epoch"] > 0 and row["test"] > 0 and row["peak_bytes"] > 0
        # the run figure adds up the epochs that ran (default 2), not one epoch counted twice
        assert len(row["epochs"]) == 2
        assert abs(row["run"] - (row["startup"] + sum(row["epochs"]) + row["test"])) < 1e-9
        # short epochs are timed again until the repeats add up to --real-min-epoch-time; the epoch figure is
        # then the fastest of all of them, else the median of the run's epochs
        if statistics.median(row["epochs"]) < 0.2:
            assert sum(row["epoch_repeats"]) >= 0.2 or len(row["epoch_repeats"]) == 100
            assert row["epoch"] == min(row["epochs"] + row["epoch_repeats"])
        else:
            assert not row["epoch_repeats"] and row["epoch"] == statistics.median(row["epochs"])
    ratio = results["ratios"]["real_coop_test_vs_reference"]
    assert ratio["n"] == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "5. Real size" in result.stdout and "real_mixprompt_feature_run_vs_coop_run" in result.stdout


def test_real_size_ratios_are_medians_of_per_round_ratios():
    """A slow round moves one round's ratio, not the summary: the ratio is taken within each round first."""
    bench = load_bench()
    rounds = [{"CoOp": {"test": t}, bench.REFERENCE_ROW: {"test": r}} for t, r in ((1, 2), (10, 20), (3, 4))]
    ratio = bench.real_ratios(rounds, 8)["real_coop_test_vs_reference"]
    assert ratio == {"median": 0.5, "min": 0.5, "max": 0.75, "n": 3}
    assert bench.summarise_rounds(rounds)["CoOp"]["test"] == {"median": 3, "min": 1, "max": 10, "n": 3}


def test_short_epoch_figure_is_its_fastest_timing_and_ignores_interruptions():
    """On a busy machine a millisecond epoch is either undisturbed or waits for a descheduled thread; the
    interrupted timings (here most of them) must not make the figure, or the ratios move with the load."""
    bench = load_bench()
    interrupted = [0.050, 0.170, 0.180, 0.165, 0.052, 0.190, 0.200]
    assert bench.epoch_figure(interrupted[:2], interrupted[2:]) == 0.050
    assert bench.epoch_figure([12.0, 10.0], []) == 11.0  # long epochs, not repeated: the median of the run's


def test_bench_rejects_bad_shapes():
    result = subprocess.run([sys.executable, "scripts/bench.py", "--classes", "0"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--classes must be >= 1" in result.stderr
