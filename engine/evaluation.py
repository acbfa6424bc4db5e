"""The Classification evaluator: accuracy, error, macro-F1, per-class results."""
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .registry import Registry

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def macro_f1(y_true, y_pred):
    """Mean F1 over the labels present in ``y_true`` (scikit-learn's ``f1_score(average="macro",
    labels=unique(y_true))``); a label with no true positives scores 0."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


@EVALUATOR_REGISTRY.register()
class Classification:
    def __init__(self, cfg, lab2cname=None, **kwargs):
        self.cfg = cfg
        self._lab2cname = lab2cname
        self._per_class = cfg.TEST.PER_CLASS_RESULT
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._per_class_res = defaultdict(list) if self._per_class else None

    def process(self, model_output, ground_truth):
        pred = model_output.max(1)[1]
        matches = pred.eq(ground_truth).float()
        self._correct += int(matches.sum().item())
        self._total += ground_truth.shape[0]
        self._y_true.extend(ground_truth.cpu().numpy().tolist())
        self._y_pred.extend(pred.cpu().numpy().tolist())
        if self._per_class:
            for label, hit in zip(ground_truth.tolist(), matches.tolist()):
                self._per_class_res[label].append(int(hit))

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / max(self._total, 1)
        err = 100.0 - acc
        f1 = 100.0 * macro_f1(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = f1
        print("=> result")
        print(f"* total: {self._total:,}")
        print(f"* correct: {self._correct:,}")
        print(f"* accuracy: {acc:.1f}%")
        print(f"* error: {err:.1f}%")
        print(f"* macro_f1: {f1:.1f}%")
        if self._per_class:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                hits = self._per_class_res[label]
                cls_acc = 100.0 * sum(hits) / len(hits)
                accs.append(cls_acc)
                name = self._lab2cname.get(label, "") if self._lab2cname else ""
                print(f"* class: {label} ({name})\ttotal: {len(hits):,}\tcorrect: {sum(hits):,}\tacc: {cls_acc:.1f}%")
            mean_acc = float(np.mean(accs)) if accs else 0.0
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            import os
            n = max(max(self._y_true, default=0), max(self._y_pred, default=0)) + 1
            cmat = np.zeros((n, n))
            for t, p in zip(self._y_true, self._y_pred):
                cmat[t, p] += 1
            cmat = cmat / np.maximum(cmat.sum(axis=1, keepdims=True), 1)
            path = os.path.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, path)
            print(f"Confusion matrix is saved to {path}")
        return results


def build_evaluator(cfg, **kwargs):
    if cfg.VERBOSE:
        print(f"Loading evaluator: {cfg.TEST.EVALUATOR}")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
