"""Collapse diagnostics for MixPrompt (DESIGN §6): per class, then averaged, plus distributions.

- ``offset_cos``: mean pairwise cosine of the raw offsets delta[c, :] (flattened per sub-prompt);
- ``feature_cos``: mean pairwise cosine of the final sub-prompt features t[c, :];
- ``usage_hard``: share of the class's training images whose arg-max responsibility is k; ``usage_soft``:
  mean responsibility; ``eff_k`` = exp(entropy(usage_hard)), the effective number of sub-prompts in use;
  ``top1_share`` = max usage_hard; ``dead`` = sub-prompts that win no image;
- ``collapsed`` (per class): ``feature_cos >= collapse_feature_cos`` (the sub-prompts are one text
  feature: the original analysis saw 0.94-0.96) **or** ``top1_share >= collapse_top1_share`` (one
  sub-prompt takes the class's images: the original saw ~99%). The run is flagged collapsed when at least
  half of the classes are.
"""
import math

import torch

from .mixprompt_model import entropy, pairwise_cosine, usage_from_gamma

DEFAULT_COLLAPSE_FEATURE_COS = 0.98
DEFAULT_COLLAPSE_TOP1_SHARE = 0.9


def _quantiles(values):
    t = torch.as_tensor(values, dtype=torch.float64)
    qs = torch.quantile(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
    return dict(zip(("min", "q25", "median", "q75", "max"), qs))


@torch.no_grad()
def collapse_diagnostics(offsets, subprompt_features, gamma, labels,
                         collapse_feature_cos=DEFAULT_COLLAPSE_FEATURE_COS,
                         collapse_top1_share=DEFAULT_COLLAPSE_TOP1_SHARE):
    """Diagnostics dict from flattened offsets, (C, K, P) per class or (K, P) shared, features (C, K, D), responsibilities
    gamma (N, K) of N training images with labels (N,). Means are over classes that have images."""
    n_cls, n_sub = subprompt_features.shape[:2]
    if offsets.dim() == 2:  # shared scope: (K, P), the same for every class
        offset_cos = pairwise_cosine(offsets.float().unsqueeze(0)).expand(n_cls)
    else:  # class scope: (C, K, P)
        offset_cos = pairwise_cosine(offsets.float())
    feature_cos = pairwise_cosine(subprompt_features.float())  # (C,)
    hard, soft, counts = usage_from_gamma(gamma.float(), labels, n_cls)
    present = counts > 0
    eff_k = entropy(hard).exp()  # (C,)
    top1 = hard.max(dim=-1).values
    dead = (hard == 0).sum(dim=-1)
    collapsed = (feature_cos >= collapse_feature_cos) | (top1 >= collapse_top1_share)
    idx = present.nonzero().flatten()

    def mean(t):
        return float(t[idx].float().mean()) if len(idx) else float("nan")

    per_class = {
        "offset_cos": offset_cos[idx].tolist(),
        "feature_cos": feature_cos[idx].tolist(),
        "eff_k": eff_k[idx].tolist(),
        "top1_share": top1[idx].tolist(),
        "dead": dead[idx].tolist(),
        "collapsed": collapsed[idx].tolist(),
        "usage_hard": hard[idx].tolist(),
        "usage_soft": soft[idx].tolist(),
        "labels": idx.tolist(),
    }
    collapsed_frac = mean(collapsed)
    return {
        "K": n_sub,
        "num_classes": len(idx),
        "offset_cos": mean(offset_cos),
        "feature_cos": mean(feature_cos),
        "eff_k": mean(eff_k),
        "top1_share": mean(top1),
        "dead": mean(dead),
        "collapsed_frac": collapsed_frac,
        "collapsed": bool(collapsed_frac >= 0.5) if not math.isnan(collapsed_frac) else False,
        "distributions": {k: _quantiles(per_class[k]) for k in ("feature_cos", "eff_k", "top1_share")}
        if len(idx) else {},
        "per_class": per_class,
        "rule": f"class collapsed if feature_cos >= {collapse_feature_cos} or top1_share >= {collapse_top1_share}; "
                "run collapsed if >= 50% of classes are",
    }


def format_diagnostics(diag):
    """One log line."""
    return (f"collapse K {diag['K']} offset_cos {diag['offset_cos']:.4f} feature_cos {diag['feature_cos']:.4f} "
            f"eff_k {diag['eff_k']:.3f} top1_share {diag['top1_share']:.3f} dead {diag['dead']:.2f} "
            f"collapsed_frac {diag['collapsed_frac']:.3f} collapsed {diag['collapsed']}")
