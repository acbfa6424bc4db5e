"""OpenAI's QuickGELU, ``x * sigmoid(1.702 x)``, with the same bits in fewer memory passes.

open_clip's module allocates two temporaries of the input's size (``1.702 * x`` and its sigmoid) and reads
them back: at ViT-B/16 size the MLP activations are B x 197 x 3072 floats, and on a CPU this memory traffic
made the activation a tenth of the image encoder's time. When no gradient has to flow through it (the frozen
image encoder, every evaluation), this version computes ``1.702 x`` once, applies the sigmoid and the product
in place: the same operations in the same order (multiplication is commutative bit for bit), so the result
is identical. Under autograd with an input that requires a gradient (the text encoder of a prompt learner
in training) it computes open_clip's expression, whose saved tensors backward needs.
"""
import torch
from open_clip.transformer import QuickGELU as OpenCLIPQuickGELU
from torch import nn

QUICK_GELU_SCALE = 1.702  # OpenAI's constant


class QuickGELU(OpenCLIPQuickGELU):
    """open_clip's QuickGELU (same class name, a subclass), in place when no gradient is needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(QUICK_GELU_SCALE * x)
        out = torch.mul(x, QUICK_GELU_SCALE)  # the one temporary, [*, width]
        torch.sigmoid_(out)
        return out.mul_(x)


def use_fast_quick_gelu(model: nn.Module) -> int:
    """Replace every open_clip QuickGELU in ``model`` by :class:`QuickGELU`; returns how many."""
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is OpenCLIPQuickGELU:
                setattr(parent, name, QuickGELU())
                replaced += 1
    return replaced


def use_reference_quick_gelu(model: nn.Module) -> int:
    """Undo :func:`use_fast_quick_gelu`: open_clip's (OpenAI's) out-of-place QuickGELU everywhere in ``model``,
    as the reference code computes it (benchmarks that emulate it); returns how many were replaced."""
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is QuickGELU:
                setattr(parent, name, OpenCLIPQuickGELU())
                replaced += 1
    return replaced
