"""Linear-probe CLIP (CoOp's / CLIP's linear-probe baseline): logistic regression on frozen image features.

Pipeline of one run (``train.py --trainer LinearProbeCLIP``):

1. Frozen, L2-normalised CLIP image features of the few-shot train split (``dm.dataset.train_x``: the same
   few-shot subset the other trainers get for the same shots and seed), the val split and the test split,
   under the test transform (no augmentation; ``trainers.features.compute_image_features``). Each split is
   encoded at most once per run and kept **in memory** (``self._features``); there is no disk cache yet, so
   every run (and every ``--eval-only`` run) encodes its images again.
2. An L2-regularised multinomial logistic regression (:func:`fit_logistic`): features standardised with the
   mean / std of the fitting set, loss ``mean cross-entropy + ||W||^2 / (2 C N)`` (sklearn's ``C``
   convention: larger C = weaker regularisation; the bias is not penalised), full-batch L-BFGS (strong Wolfe
   line search) in float64 on the CPU from a zero start, hence deterministic.
3. The strength C is chosen on the val split by :func:`search_c` (CoOp's linear-probe search): a coarse
   log10 grid of ``COARSE_STEPS`` values from ``10**C_MIN_LOG10`` to ``10**C_MAX_LOG10``, then
   ``REFINE_STEPS`` bisection steps in log space around the best value (each step evaluates the midpoints
   between the current best and its left / right bounds and halves the bracket). Every candidate's val
   accuracy is printed. Ties in val accuracy go to the lower val cross-entropy (rounded to 4 decimals, so
   float noise does not drive the search), then to the smaller C (stronger regularisation).
   If the val split is empty, C is chosen by a stratified ``FOLDS``-fold cross-validation on the train split
   (item ``i`` of a class goes to fold ``i mod FOLDS``; pooled accuracy over the folds), and the log says so.
4. Refit: on the **train split only** with the chosen C (as CoOp's linear probe does): val is used for
   selection only, like ``TEST.FINAL_MODEL best_val`` in the other trainers, so every method learns from the
   same few-shot images.
5. The head (weights, bias, standardisation) is saved as model ``linear_head`` in Dassl's layout
   (``linear_head/model.pth.tar-1`` and ``model-best.pth.tar`` with the val result), so
   ``--eval-only --model-dir DIR`` (with or without ``--load-epoch 1``) reproduces the test accuracy; then
   the test split goes through the normal evaluator (``Finish training``, ``=> result``, ``* accuracy``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import ConfigError
from yacs.config import CfgNode as CN

from .base import CLIPTrainer
from .clip_heads import CLIPClassifier
from .features import compute_image_features
from .registry import register_trainer

HEAD = "linear_head"


class LinearHead(nn.Module):
    """logits = ((x - mean) / std) @ weight.T + bias, on L2-normalised CLIP image features."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=False)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x):
        x = (x.to(self.weight.dtype) - self.mean) / self.std
        return x @ self.weight.t() + self.bias


class ImageEncoder(CLIPClassifier):
    """Frozen CLIP; only ``encode_image`` is used (no text features)."""

    def text_features(self):
        return None


def fit_logistic(x, y, num_classes, c, max_iter=1000):
    """A :class:`LinearHead` (float32) fitted on features ``x`` (N, D), labels ``y`` (N,) with strength ``c``."""
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    n, dim = z.shape
    w = torch.zeros(num_classes, dim, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    lam = 1.0 / (c * n)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.t() + b, y) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    head = LinearHead(dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(w.detach().float())
        head.bias.copy_(b.detach().float())
        head.mean.copy_(mean.float())
        head.std.copy_(std.float())
    return head


@torch.no_grad()
def evaluate_head(head, x, y):
    """(accuracy in %, mean cross-entropy) of ``head`` on ``(x, y)``."""
    logits = head(x.float())
    acc = (logits.argmax(dim=1) == y).float().mean().item() * 100
    return acc, F.cross_entropy(logits, y).item()


def stratified_folds(y, folds):
    """Fold index per item: the i-th item of each class (in split order) goes to fold ``i % folds``."""
    seen = {}
    out = torch.empty_like(y)
    for i, label in enumerate(y.tolist()):
        out[i] = seen.get(label, 0) % folds
        seen[label] = seen.get(label, 0) + 1
    return out


def search_c(score, c_min_log10, c_max_log10, coarse_steps, refine_steps, log=print):
    """Best C by a coarse log10 grid then bisection in log space; ``score(c) -> (acc, loss)``.

    Returns ``(best_c, best_acc, history)`` with history ``[(c, acc, loss)]`` in evaluation order.
    """
    history = []
    cache = {}

    def evaluate(log_c, phase):
        key = round(log_c, 10)
        if key not in cache:
            c = 10.0 ** log_c
            acc, loss = score(c)
            cache[key] = (acc, loss)
            history.append((c, acc, loss))
            log(f"[linear probe] {phase} C={c:.4g} (log10 {log_c:+.3f}): val accuracy {acc:.2f}%, "
                f"val loss {loss:.4f}")
        return cache[key]

    def better(a, b):  # (log_c, acc, loss): higher acc, then lower loss (to 4 decimals), then smaller C
        return (round(a[1], 6), -round(a[2], 4), -a[0]) > (round(b[1], 6), -round(b[2], 4), -b[0])

    grid = [c_min_log10 + (c_max_log10 - c_min_log10) * i / (coarse_steps - 1) for i in range(coarse_steps)]
    best = None
    for log_c in grid:
        cand = (log_c, *evaluate(log_c, "coarse"))
        if best is None or better(cand, best):
            best = cand
    step = (c_max_log10 - c_min_log10) / (coarse_steps - 1)
    left, right = max(best[0] - step, c_min_log10), min(best[0] + step, c_max_log10)
    for i in range(refine_steps):
        for log_c in ((left + best[0]) / 2, (best[0] + right) / 2):
            cand = (log_c, *evaluate(log_c, f"refine {i + 1}/{refine_steps}"))
            if better(cand, best):
                best = cand
        half = (right - left) / 4
        left, right = max(best[0] - half, c_min_log10), min(best[0] + half, c_max_log10)
    return 10.0 ** best[0], best[1], history


@register_trainer
class LinearProbeCLIP(CLIPTrainer):
    """Logistic regression on frozen CLIP image features; C chosen on val (see the module docstring)."""

    cfg_node = "LINEAR_PROBE"
    aliases = ("linear_probe",)
    report_order = 10

    @staticmethod
    def add_config(cfg):
        """TRAINER.LINEAR_PROBE (docs/linear_probe.md). C (sklearn's convention: larger = weaker L2) is
        searched on a coarse log10 grid of COARSE_STEPS values from 10**C_MIN_LOG10 to 10**C_MAX_LOG10
        (CoOp's 1e-6 .. 1e6 in powers of 100), then REFINE_STEPS bisection steps in log space around the
        best; FOLDS-fold cross-validation on train when val is empty."""
        lp = cfg.TRAINER.LINEAR_PROBE = CN()
        lp.C_MIN_LOG10 = -6.0
        lp.C_MAX_LOG10 = 6.0
        lp.COARSE_STEPS = 7  # grid values including both bounds
        lp.REFINE_STEPS = 8  # bisection steps (2 fits each)
        lp.MAX_ITER = 1000  # L-BFGS iterations per fit
        lp.FOLDS = 3  # cross-validation folds when the val split is empty
        lp.PREC = "fp16"  # fp16 | fp32 | amp: feature extraction only (fp16 runs as fp32 on CPU)

    def check_cfg(self, cfg):
        lp = cfg.TRAINER.LINEAR_PROBE
        if not lp.C_MIN_LOG10 < lp.C_MAX_LOG10:
            raise ConfigError(f"TRAINER.LINEAR_PROBE.C_MIN_LOG10: must be below TRAINER.LINEAR_PROBE.C_MAX_LOG10, "
                              f"got {lp.C_MIN_LOG10} and {lp.C_MAX_LOG10}")
        for key, low in (("COARSE_STEPS", 2), ("REFINE_STEPS", 0), ("MAX_ITER", 1), ("FOLDS", 2)):
            value = lp[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"TRAINER.LINEAR_PROBE.{key}: must be an integer >= {low}, got {value!r}")

    def build_model(self):
        clip_model = self.load_clip()
        print("Building the frozen CLIP image encoder and a linear head")
        self.model = ImageEncoder(clip_model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.to(self.device)
        self.scaler = None
        dim = int(getattr(self.clip_info, "embed_dim", 0) or getattr(clip_model.visual, "output_dim", 0)
                  or clip_model.text_projection.shape[1])
        self.head = LinearHead(dim, self.num_classes)
        self.register_model(HEAD, self.head, None, None)
        self._features = {}
        print(f"Linear head: {self.num_classes} classes x {dim} features")

    def features(self, split):
        """(features, labels) of a split, encoded once per run and kept in memory (no disk cache)."""
        if split not in self._features:
            items = {"train": self.dm.dataset.train_x, "val": self.dm.dataset.val,
                     "test": self.dm.dataset.test}[split]
            if not items:
                self._features[split] = None
            else:
                print(f"Computing frozen image features of the {split} split ({len(items)} images)")
                x, y, _ = compute_image_features(self.model, items, self.cfg, self.device)
                self._features[split] = (x, y)
        return self._features[split]

    def train(self):
        self.before_train()
        if self.start_epoch >= 1:
            print("The fitted linear head was loaded from the checkpoint: not fitting it again")
        else:
            val_acc = self.fit()
            self.save_model(0, self.output_dir)
            self.save_model(0, self.output_dir, val_result=val_acc, model_name="model-best.pth.tar")
        self.after_train()

    def fit(self):
        lp = self.trainer_cfg
        x, y = self.features("train")
        val = self.features("val")
        nc = self.num_classes

        if val is not None:
            xv, yv = val
            print(f"[linear probe] choosing C on the val split ({len(yv)} images)")

            def score(c):
                return evaluate_head(fit_logistic(x, y, nc, c, lp.MAX_ITER), xv, yv)
        else:
            folds = stratified_folds(y, lp.FOLDS)
            print(f"[linear probe] the val split is empty: choosing C by stratified {lp.FOLDS}-fold "
                  f"cross-validation on the train split ({len(y)} images)")

            def score(c):
                correct, loss_sum = 0.0, 0.0
                for k in range(lp.FOLDS):
                    held = folds == k
                    if not held.any() or held.all():
                        continue
                    acc, loss = evaluate_head(fit_logistic(x[~held], y[~held], nc, c, lp.MAX_ITER),
                                              x[held], y[held])
                    correct += acc * held.sum().item()
                    loss_sum += loss * held.sum().item()
                return correct / len(y), loss_sum / len(y)

        c, acc, history = search_c(score, lp.C_MIN_LOG10, lp.C_MAX_LOG10, lp.COARSE_STEPS, lp.REFINE_STEPS)
        print(f"[linear probe] best C={c:.4g} (val accuracy {acc:.2f}%, {len(history)} candidates); "
              f"refitting on the train split only")
        fitted = fit_logistic(x, y, nc, c, lp.MAX_ITER)
        self.head.load_state_dict(fitted.state_dict())
        self.best_c = c
        train_acc, _ = evaluate_head(self.head, x, y)
        print(f"[linear probe] train accuracy {train_acc:.2f}%")
        return acc

    @torch.no_grad()
    def test(self, split=None):
        """The normal evaluator on the cached features of the split (val falls back to test when empty)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split != "val" or self.features("val") is None:
            split = "test"
        print(f"Evaluate on the *{split}* set")
        x, y = self.features(split)
        batch = max(1, self.cfg.DATALOADER.TEST.BATCH_SIZE)
        for start in range(0, len(y), batch):
            self.evaluator.process(self.head(x[start:start + batch]), y[start:start + batch])
        results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)
        return list(results.values())[0]

    def model_inference(self, image):
        return self.head(self.model.encode_image(image).float().cpu())


__all__ = ["LinearProbeCLIP", "LinearHead", "fit_logistic", "search_c", "evaluate_head", "stratified_folds"]
