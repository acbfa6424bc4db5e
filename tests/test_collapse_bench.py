"""The collapse benchmark: a dataset with known modes, mode-recovery metrics, and the CLI's verdict."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, _load_script


@pytest.fixture(scope="module")
def bench():
    return _load_script("collapse_bench")


def test_nmi_and_purity():
    from trainers.mixprompt_diagnostics import nmi, purity

    truth = [0, 0, 1, 1, 2, 2]
    assert nmi(truth, [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)  # a relabelled perfect recovery
    assert nmi(truth, [0] * 6) == pytest.approx(0.0)  # collapse: one sub-prompt takes everything
    assert purity(truth, [0] * 6) == pytest.approx(1 / 3)
    assert purity(truth, list(range(6))) == pytest.approx(1.0)  # over-splitting is pure...
    assert nmi(truth, list(range(6))) < 0.8  # ...but NMI sees it


def _dataset(tmp_path, **knobs):
    from engine import set_random_seed
    from trainers.cli import build_parser, setup_cfg

    opts = ["MODEL.BACKBONE.NAME", "unused"]
    for key, value in knobs.items():
        opts += [f"DATASET.SYNTHETIC.{key}", str(value)]
    args = build_parser().parse_args([
        "--root", str(tmp_path), "--trainer", "CoOp", "--seed", "1",
        "--dataset-config-file", str(REPO_ROOT / "configs/datasets/synthetic_modes.yaml"), *opts])
    cfg = setup_cfg(args)
    set_random_seed(1)
    from datasets.synthetic_modes import SyntheticModes
    return SyntheticModes(cfg)


def test_synthetic_dataset_has_known_modes_imbalance_and_separation(tmp_path):
    from datasets.synthetic_modes import mode_of

    data = _dataset(tmp_path, NUM_CLASSES=3, NUM_MODES=3, IMAGES_PER_MODE=4, IMBALANCE=0.25, IMAGE_SIZE=16)
    modes = mode_of(data.dataset_dir)
    per_class_mode = {}
    for item in data.train_x:
        key = (item.label, modes[item.impath])
        per_class_mode[key] = per_class_mode.get(key, 0) + 1
    assert [per_class_mode[(0, m)] for m in range(3)] == [4, 2, 1]  # 4 * 0.25 ** (m / 2)
    assert data.num_classes == 3 and len(data.test) == 3 * 3 * 4 and not data.val
    again = _dataset(tmp_path, NUM_CLASSES=3, NUM_MODES=3, IMAGES_PER_MODE=4, IMBALANCE=0.25, IMAGE_SIZE=16)
    assert [d.impath for d in again.train_x] == [d.impath for d in data.train_x]  # generated once, reused

    def mode_gap(separation, folder):
        d = _dataset(folder, NUM_CLASSES=1, NUM_MODES=2, IMAGES_PER_MODE=1, MODE_SEPARATION=separation)
        m = mode_of(d.dataset_dir)
        imgs = {m[x.impath]: np.asarray(Image.open(x.impath), dtype=float) for x in d.train_x}
        return np.abs(imgs[0] - imgs[1]).mean()

    assert mode_gap(0.0, tmp_path / "a") < 15 < mode_gap(1.0, tmp_path / "b")  # noise only vs distinct looks


def test_bench_cli_original_collapses_fixed_recovers_modes(bench, tmp_path):
    import torch

    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--backbone", "random", "--K", "4", "--seeds", "1", "--settings",
         "original", "fixed", "1nn", "oracle_mode_means", "oracle_kmeans", "kmeans_k", "kmeans_k_balanced", "kmeans_k_balanced_em",
         "oracle_mode_split", "oracle_mode_split_balanced", "oracle_mode_split_equal", "oracle_init",
         "oracle_init_equal", "ward_k", "fixed+cluster_means", "tip", "--classes", "3", "--modes", "3",
         "--images-per-mode", "6", "--test-per-mode", "2", "--epochs", "8",
         "--batch-size", "8", "--out", str(out), "--json", str(out / "bench.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| setting" in proc.stdout and "NMI" in proc.stdout and "oracle_* rows use the true modes" in proc.stdout
    rows = {r["setting"]: r for r in json.load(open(out / "bench.json"))["table"]}
    assert rows["oracle_mode_means"]["accuracy"] > 90 and rows["oracle_kmeans"]["nmi"] > 0.5  # modes are separable
    assert rows["1nn"]["accuracy"] is not None and rows["tip"]["accuracy"] is not None and rows["tip"]["nmi"] is None
    # K 4 clusters for 3 modes of 6 images: a split finer than the modes, balanced at most 5 images a cluster
    assert rows["kmeans_k"]["K"] == 4 and rows["kmeans_k"]["purity"] > 0.9
    assert 0 <= rows["kmeans_k"]["accuracy"] <= 100 and rows["kmeans_k_balanced"]["accuracy"] is None
    assert rows["kmeans_k_balanced"]["nmi"] <= rows["kmeans_k"]["nmi"] + 1e-9
    assert rows["kmeans_k_balanced_em"]["accuracy"] is not None and rows["kmeans_k_balanced_em"]["purity"] > 0.5
    assert rows["oracle_mode_split"]["purity"] > 0.9 and rows["oracle_mode_split_balanced"]["nmi"] is not None
    # oracle_init(_equal): MixPrompt started at the oracle_mode_split(_equal) centroids, (C, K, D), written once
    # per K, data and weights (the same for every seed)
    (start,) = (out / "features").glob(f"oracle_mode_split_v{bench.START_VERSION}_K4_*.pt")
    assert torch.load(start).shape[:2] == (3, 4) and rows["oracle_init"]["accuracy"] is not None
    (equal_start,) = (out / "features").glob(f"oracle_mode_split_equal_v{bench.START_VERSION}_K4_*.pt")
    assert torch.load(equal_start).shape[:2] == (3, 4)
    assert rows["oracle_init_equal"]["accuracy"] is not None and rows["oracle_mode_split_equal"]["purity"] > 0.9
    # ward_k needs no modes; fixed+cluster_means starts MixPrompt at its cluster means
    assert rows["ward_k"]["K"] == 4 and rows["ward_k"]["accuracy"] is not None and rows["ward_k"]["purity"] > 0.9
    assert rows["fixed+cluster_means"]["accuracy"] is not None
    original, fixed = rows["original"], rows["fixed"]
    assert original["collapsed"] == 1.0 and original["eff_k"] < 1.3 and original["nmi"] < 0.2
    assert fixed["collapsed"] == 0.0 and fixed["eff_k"] > 2.0 and fixed["nmi"] > original["nmi"] + 0.3
    # a second call reuses the finished runs instead of training again
    again = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--backbone", "random", "--K", "4", "--seeds", "1", "--settings",
         "original", "oracle_kmeans", "--classes", "3", "--modes", "3", "--images-per-mode", "6", "--test-per-mode", "2", "--epochs", "8",
         "--batch-size", "8", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("(reused)") == 2
    # references written by an older version of the feature rows are recomputed, not shown as they were
    references = out / "features" / "seed1" / "references.json"
    old = json.loads(references.read_text())
    assert rows["oracle_mode_means"]["nmi"] > 0.5 and old.pop("version") == bench.REFERENCES_VERSION
    references.write_text(json.dumps(old))
    refreshed = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--backbone", "random", "--K", "4", "--seeds", "1", "--settings",
         "oracle_kmeans", "--classes", "3", "--modes", "3", "--images-per-mode", "6", "--test-per-mode", "2",
         "--epochs", "8", "--batch-size", "8", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert "(reused)" not in refreshed.stdout
    assert json.loads(references.read_text())["version"] == bench.REFERENCES_VERSION
    # a finished run made with other settings (here: a default changed since) is never reused or overwritten;
    # another trainer's keys do not count, nor a key added since with the value the run behaved as
    def edit_record(setting, key, value=None):
        path = out / setting / "k4" / "seed1" / "result.json"
        record = json.loads(path.read_text())
        if value is None:
            del record["settings"][key]  # as in a record written before the key existed
        else:
            record["settings"][key] = value
        path.write_text(json.dumps(record))
    edit_record("fixed", "TRAINER.MIXPROMPT.MIXTURE_LOSS", "ce")
    edit_record("original", "TRAINER.COOP.N_CTX", 99)
    edit_record("original", "TRAINER.MIXPROMPT.SINKHORN_POWER")
    stale = subprocess.run(
        [sys.executable, "scripts/collapse_bench.py", "--backbone", "random", "--K", "4", "--seeds", "1", "--settings",
         "original", "fixed", "--classes", "3", "--modes", "3", "--images-per-mode", "6", "--test-per-mode", "2",
         "--epochs", "8", "--batch-size", "8", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert stale.returncode != 0 and stale.stdout.count("(reused)") == 1
    assert str(out / "fixed" / "k4" / "seed1") in stale.stderr
    assert "TRAINER.MIXPROMPT.MIXTURE_LOSS: 'ce' there, 'ce_pull' now" in stale.stderr


def test_feature_references_and_oracles_on_known_features(bench):
    import torch
    import torch.nn.functional as F

    # two classes x two modes; each (class, mode) a tight cluster around its own direction
    centres = F.normalize(torch.eye(8)[:4] + 0.1, dim=-1)
    mode = torch.tensor([0, 1] * 8)
    label = torch.tensor([0] * 8 + [1] * 8)
    x = F.normalize(centres[label * 2 + mode] + 0.01 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0)),
                    dim=-1)
    test_x, test_y = centres, torch.tensor([0, 0, 1, 1])
    assert bench.nearest_mode_mean_accuracy(x, label, mode, test_x, test_y) == pytest.approx(100.0)
    assert bench.nearest_neighbour_accuracy(x, label, test_x, test_y) == pytest.approx(100.0)
    assert bench.kmeans_mode_recovery(x, label, mode, 2, seed=1) == pytest.approx((1.0, 1.0))
    assert bench.nearest_mode_mean_recovery(x, label, mode) == pytest.approx((1.0, 1.0))
    shuffled = torch.tensor([0, 0, 1, 1] * 4)  # modes unrelated to the clusters: k-means cannot find them
    assert bench.kmeans_mode_recovery(x, label, shuffled, 2, seed=1)[0] < 0.2
    assert bench.nearest_mode_mean_recovery(x, label, shuffled)[0] < 0.5  # nor can their means
    # a mean per class (one mode) misclassifies when a class's two modes surround another class's mode
    xs, ys, ms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    tx, ty = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]]), torch.tensor([0, 0, 1])
    assert bench.nearest_mode_mean_accuracy(xs, ys, ms, tx, ty) == pytest.approx(100.0)
    assert bench.nearest_mode_mean_accuracy(xs, ys, torch.zeros(3, dtype=torch.long), tx, ty) < 100.0
    # the same data for k-means prototypes: two per class separate them, one per class (the class mean) does not
    assert bench.nearest_centroid_accuracy(bench.class_kmeans(xs, ys, 2, seed=0), tx, ty) == pytest.approx(100.0)
    assert bench.nearest_centroid_accuracy(bench.class_kmeans(xs, ys, 1, seed=0), tx, ty) < 100.0


def test_world_backbone_is_the_default_with_the_documented_data(bench, tmp_path):
    args = bench.build_parser().parse_args(["--out", str(tmp_path)])
    assert args.backbone == "world"
    opts = dict(zip(*[iter(bench.data_opts(args))] * 2))
    w = "DATASET.SYNTHETIC_WORLD."
    assert (opts[w + "NUM_CLASSES"], opts[w + "NUM_MODES"], opts[w + "TRAIN_PER_CLASS"], opts[w + "TEST_PER_CLASS"],
            opts["INPUT.SIZE"]) == ("6", "4", "32", "64", "(32, 32)")  # 384 test images: one is 0.26 points
    argv = bench.train_argv(args, "fixed", 8, 1, str(tmp_path / "run"), "w.pt")
    assert argv[argv.index("--dataset-config-file") + 1].endswith("synthetic_world_modes.yaml")
    assert "--eval-only" not in argv
    at_init = bench.build_parser().parse_args(["--out", str(tmp_path), "--at-init"])
    assert "--eval-only" in bench.train_argv(at_init, "fixed", 8, 1, str(tmp_path / "run"), "w.pt")  # epoch 0
    with pytest.raises(SystemExit):
        bench.main(["--separation", "0.5", "--out", str(tmp_path)])  # random backbone only


def test_balanced_assignment_gives_every_cluster_an_equal_share(bench):
    import torch

    from trainers.mixprompt_diagnostics import nmi

    # one class: 6 images of mode 0 near the origin, 2 of mode 1 far away; two centroids at the modes
    points = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4], [0.5], [10.0], [10.1]])
    mode = torch.tensor([0] * 6 + [1] * 2)
    distances = torch.cdist(points, torch.tensor([[0.25], [10.05]]))
    balanced = bench.balanced_assignment(distances)
    assert torch.bincount(balanced).tolist() == [4, 4]
    assert balanced[6:].tolist() == [1, 1] and balanced[4:6].tolist() == [1, 1]  # the two closest to mode 1 move
    assert nmi(mode.tolist(), distances.argmin(dim=1).tolist()) == pytest.approx(1.0)
    assert nmi(mode.tolist(), balanced.tolist()) < 0.7
    # sizes floor(N / k) or ceil(N / k): no cluster left empty when N is not a multiple of k
    sizes = torch.bincount(bench.balanced_assignment(torch.cdist(torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4]]),
                                                                 torch.tensor([[0.0], [1.0], [5.0], [100.0]]))),
                           minlength=4)
    assert sorted(sizes.tolist()) == [1, 1, 1, 2]
    label = torch.zeros(8, dtype=torch.long)
    assert bench.kmeans_mode_recovery(points, label, mode, 2, seed=0)[0] == pytest.approx(1.0)
    assert bench.kmeans_mode_recovery(points, label, mode, 2, seed=0, balanced=True)[0] < 0.7


def test_balanced_hard_em_moves_centroids_to_equal_parts_and_stops(bench):
    import math

    import torch

    # one class on the unit circle: 4 images around 0 degrees, 4 around 90; both centroids start inside the first
    def unit(degrees):
        radians = torch.tensor(degrees) * math.pi / 180
        return torch.stack([radians.cos(), radians.sin()], dim=1)

    points = unit([-4.0, -2.0, 2.0, 4.0, 86.0, 88.0, 92.0, 94.0])  # (8, 2)
    start = unit([-3.0, 3.0])  # (2, 2)
    assert torch.cdist(points, start).argmin(dim=1).tolist() == [0, 0] + [1] * 6  # free shares: 2 and 6
    # one round already gives each centroid one group: equal shares force 4 / 4 (free shares would move the
    # second centroid only to the mean of its 6 images, about 64 degrees)
    assert torch.allclose(bench.balanced_hard_em(points, start, max_iters=1), unit([0.0, 90.0]), atol=1e-6)
    refined = bench.balanced_hard_em(points, start)
    assert torch.allclose(refined.norm(dim=1), torch.ones(2))
    assert torch.allclose(refined, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), atol=1e-6)  # the two groups' directions
    # a fixed point: another round changes nothing, and the split is the groups
    assert torch.allclose(bench.balanced_hard_em(points, refined, max_iters=1), refined)
    assert torch.cdist(points, refined).argmin(dim=1).tolist() == [0] * 4 + [1] * 4


def test_ward_row_is_the_class_ward_means(bench):
    import torch

    label = torch.tensor([0, 0, 1, 1, 1])
    points = torch.tensor([[30.0], [0.0], [11.0], [1.0], [10.0]])
    means = bench.class_ward(points, label, 2)  # class 1 is 11, 1, 10: {11, 10} and {1}
    assert means[0].tolist() == [[30.0], [0.0]] and means[1].tolist() == [[10.5], [1.0]]


def test_cached_feature_rows_are_named_by_the_data_and_the_weights_content(bench, tmp_path):
    args = bench.build_parser().parse_args(["--out", str(tmp_path)])
    (tmp_path / "a.pt").write_bytes(b"weights a")
    (tmp_path / "b.pt").write_bytes(b"weights b")
    fingerprint = bench.data_fingerprint(args, str(tmp_path / "a.pt"))
    assert fingerprint == bench.data_fingerprint(args, str(tmp_path / "a.pt"))
    assert fingerprint != bench.data_fingerprint(args, str(tmp_path / "b.pt"))  # same data, other weights
    other_data = bench.build_parser().parse_args(["--out", str(tmp_path), "--data-seed", "1"])
    assert fingerprint != bench.data_fingerprint(other_data, str(tmp_path / "a.pt"))
    args.fingerprint = fingerprint
    version = bench.START_VERSION
    assert bench.start_centroids_path(args, 8, "oracle_mode_split").endswith(
        f"oracle_mode_split_v{version}_K8_{fingerprint}.pt")
    for setting in ("oracle_init", "oracle_init_equal"):  # they need K >= M, said before anything runs
        with pytest.raises(SystemExit):
            bench.main(["--K", "2", "--settings", setting, "--out", str(tmp_path / "bench")])
    assert not (tmp_path / "bench").exists()


def test_mode_split_oracle_puts_centroids_inside_each_true_mode(bench):
    import torch

    assert bench.centroids_per_mode([8, 8, 8, 8], 8) == [2, 2, 2, 2]
    assert bench.centroids_per_mode([5, 3, 2], 7) == [3, 2, 2]  # the remainder to the largest mode
    assert bench.centroids_per_mode([5, 3, 1], 7) == [4, 2, 1]  # never more than images; the spare slot moves
    assert bench.centroids_per_mode([16, 4], 16) == [12, 4]
    assert bench.centroids_per_mode([8, 5, 3, 2], 16) == [7, 4, 3, 2]
    assert bench.centroids_per_mode([2, 1], 8) == [2, 1]  # fewer images than sub-prompts
    assert bench.centroids_per_mode([5, 3, 1], 2) is None  # fewer sub-prompts than modes
    # one class, two modes of two lobes each; mode 0's lobes lie either side of mode 1, so one centroid per
    # mode (k-means with k = M) cannot separate them, two per mode can
    points = torch.tensor([[0.0], [0.1], [8.0], [8.1], [5.0], [5.1], [5.2], [5.3]])
    mode = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    label = torch.zeros(8, dtype=torch.long)
    nmi_split, purity_split = bench.mode_split_recovery(points, label, mode, 4, seed=0)
    assert purity_split == pytest.approx(1.0)
    assert nmi_split == pytest.approx(bench.balanced_nmi_ceiling(label, mode, 4))  # pure equal quarters: the bound
    assert bench.mode_split_recovery(points, label, mode, 4, seed=0, balanced=True)[1] == pytest.approx(1.0)
    assert bench.kmeans_mode_recovery(points, label, mode, 2, seed=0)[1] < 1.0
    assert bench.mode_split_recovery(points, label, mode, 1, seed=0) == (None, None)


def test_equal_mode_split_cuts_each_mode_into_equal_parts(bench):
    import torch

    # one class, two modes of 4 images, K 4: k-means gives mode 0's two centroids 3 images and 1 (a far
    # outlier); the equal variant moves them to the means of an equal cut of the mode, 2 images each
    points = torch.tensor([[0.0], [0.1], [0.2], [3.0], [10.0], [10.1], [10.2], [10.3]])
    mode = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    label = torch.zeros(8, dtype=torch.long)
    plain = bench.mode_split_centroids(points, label, mode, 4, seed=0)[0]
    equal = bench.mode_split_centroids(points, label, mode, 4, seed=0, equal=True)[0]  # (4, 1)
    assert sorted(plain[:2, 0].tolist()) == pytest.approx([0.1, 3.0])
    assert sorted(equal[:2, 0].tolist()) == pytest.approx([0.05, 1.6])  # the means of {0, 0.1} and {0.2, 3}
    assert sorted(equal[2:, 0].tolist()) == pytest.approx([10.05, 10.25])
    assert bench.equal_part_means(points[:4], plain[:2]).shape == (2, 1)
    # the centroids stay inside their modes: the nearest-centroid split is pure
    assert bench.mode_split_recovery(points, label, mode, 4, seed=0, equal=True)[1] == pytest.approx(1.0)
    assert bench.mode_split_centroids(points, label, mode, 1, seed=0, equal=True) is None  # K < M


def test_balanced_nmi_ceiling_is_what_a_pure_equal_share_split_scores(bench):
    import torch

    from trainers.mixprompt_diagnostics import nmi

    # one class of 4 modes x 8 images: 8 equal groups that each hold half of one mode reach the bound 0.8,
    # a split that mixes modes stays below it, and so does any balanced split at K = 32 or K = 2
    mode = torch.arange(4).repeat_interleave(8)
    label = torch.zeros(32, dtype=torch.long)
    pure_halves = torch.arange(8).repeat_interleave(4).tolist()
    ceiling = bench.balanced_nmi_ceiling(label, mode, 8)
    assert ceiling == pytest.approx(2 * math.log(4) / (math.log(4) + math.log(8)))
    assert nmi(mode.tolist(), pure_halves) == pytest.approx(ceiling)
    assert nmi(mode.tolist(), [i % 8 for i in range(32)]) < ceiling
    assert bench.balanced_nmi_ceiling(label, mode, 32) == pytest.approx(2 * math.log(4) / (math.log(4) + math.log(32)))
    assert bench.balanced_nmi_ceiling(label, mode, 2) == pytest.approx(2 * math.log(2) / (math.log(4) + math.log(2)))
    assert bench.balanced_nmi_ceiling(label, mode, 4) == pytest.approx(1.0)
