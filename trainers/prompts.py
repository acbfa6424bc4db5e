"""CoOp-style learnable context: initialisation and assembly of prompt embeddings.

A prompt for class c is ``[SOS] ctx_1 .. ctx_M [class tokens] . [EOS] pad`` (position "end"), with the
class tokens moved to the middle or front by ``CLASS_TOKEN_POSITION``. Only the context is learnable; the
token embeddings around it are fixed buffers rebuilt from the class names (not saved in checkpoints).
"""
import torch
import torch.nn as nn

from engine.errors import ConfigError

from .clip import tokenize
from .templates import format_classname


def count_bpe_tokens(text):
    """Number of BPE tokens of ``text`` without SOT/EOT."""
    return int((tokenize([text])[0] != 0).sum().item()) - 2


def init_context(text_encoder, n_ctx, ctx_init, n_cls, class_specific, dtype, key_prefix):
    """Context vectors and the text standing for them in the prompt.

    Returns ``(ctx, prefix_text)``: ctx is (n_ctx, W), or (n_cls, n_ctx, W) when class-specific; with
    ``ctx_init`` the vectors are the token embeddings of those words (their BPE count sets n_ctx, and the
    context is generic like CoOp's), otherwise N(0, 0.02).
    """
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        n_ctx = count_bpe_tokens(ctx_init)
        if n_ctx < 1:
            raise ConfigError(f'{key_prefix}.CTX_INIT: "{ctx_init}" has no tokens')
        tokens = tokenize([ctx_init])
        with torch.no_grad():
            embedding = text_encoder.embed(tokens).to(dtype)  # (1, L, W)
        ctx = embedding[0, 1:1 + n_ctx, :].clone()  # (n_ctx, W)
        prefix_text = ctx_init
    else:
        if n_ctx < 1:
            raise ConfigError(f"{key_prefix}.N_CTX: must be >= 1, got {n_ctx}")
        width = text_encoder.width
        if class_specific:
            print("Initializing class-specific contexts")
            ctx = torch.empty(n_cls, n_ctx, width, dtype=dtype)  # (C, M, W)
        else:
            print("Initializing a generic context")
            ctx = torch.empty(n_ctx, width, dtype=dtype)  # (M, W)
        nn.init.normal_(ctx, std=0.02)
        prefix_text = " ".join(["X"] * n_ctx)
    print(f'Initial context: "{prefix_text}"')
    print(f"Number of context words (tokens): {n_ctx}")
    return ctx, prefix_text


class ClassPromptTokens(nn.Module):
    """Fixed token embeddings around the context for each class, as non-persistent buffers."""

    def __init__(self, text_encoder, classnames, n_ctx, dtype):
        super().__init__()
        names = [format_classname(name) for name in classnames]
        self.name_lens = [count_bpe_tokens(name) for name in names]
        placeholder = " ".join(["X"] * n_ctx)
        tokenized = tokenize([f"{placeholder} {name}." for name in names])  # (C, L)
        with torch.no_grad():
            embedding = text_encoder.embed(tokenized).to(dtype)  # (C, L, W)
        self.register_buffer("token_prefix", embedding[:, :1, :], persistent=False)  # (C, 1, W) SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :], persistent=False)  # (C, L-1-M, W)
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)  # (C, L)
        self.n_ctx = n_ctx


def assemble_prompts(ctx, tokens, position="end", class_index=None):
    """Prompt embeddings (N, L, W) from context ``ctx`` and fixed ``tokens`` (ClassPromptTokens).

    ``ctx`` is (M, W) shared, (N, M, W) per prompt; ``class_index`` (N,) says which class each prompt is
    for (default: one prompt per class, N = C).
    """
    prefix, suffix = tokens.token_prefix, tokens.token_suffix
    name_lens = tokens.name_lens
    if class_index is not None:
        prefix, suffix = prefix[class_index], suffix[class_index]
        name_lens = [name_lens[i] for i in class_index.tolist()]
    n = prefix.shape[0]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n, -1, -1)  # (N, M, W)
    ctx = ctx.to(prefix.dtype)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    if position not in ("middle", "front"):
        raise ConfigError(f'CLASS_TOKEN_POSITION: "{position}" is not one of [end, middle, front]')
    half = ctx.shape[1] // 2
    prompts = []
    for i, name_len in enumerate(name_lens):
        class_tokens, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
        if position == "middle":
            parts = [prefix[i:i + 1], ctx[i:i + 1, :half], class_tokens, ctx[i:i + 1, half:], rest]
        else:
            parts = [prefix[i:i + 1], class_tokens, ctx[i:i + 1], rest]
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0)
