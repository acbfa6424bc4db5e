"""CLIP text side: OpenAI's BPE tokenizer and a text encoder that takes prompt *embeddings* (CoOp style)."""
import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import nn

CONTEXT_LENGTH = 77
OPENAI_VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=1)
def _bpe():
    """open_clip's SimpleTokenizer (OpenAI's BPE: SOT 49406, EOT 49407)."""
    import open_clip

    return open_clip.SimpleTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """Tokenize like OpenAI's CLIP: ``[SOT] tokens [EOT] 0 ...`` -> int64 tensor [N, context_length].

    Unlike open_clip's tokenizer this never truncates: a text that does not fit raises ValueError.
    """
    if isinstance(texts, str):
        texts = [texts]
    bpe = _bpe()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)  # [N, context_length], 0 = padding
    for i, text in enumerate(texts):
        ids = [bpe.sot_token_id] + bpe.encode(text) + [bpe.eot_token_id]
        if len(ids) > context_length:
            raise ValueError(
                f"Text {text!r} is {len(ids)} tokens long including start and end tokens, more than CLIP's "
                f"context length {context_length}; shorten it (fewer context words or a shorter class name)."
            )
        result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result


def _text_tower(clip_model: nn.Module) -> nn.Module:
    """The module holding the text transformer: CLIP itself, or ``.text`` of open_clip's CustomTextCLIP."""
    if hasattr(clip_model, "token_embedding"):
        return clip_model
    text = getattr(clip_model, "text", None)
    if text is not None and hasattr(text, "token_embedding"):
        return text
    raise ValueError(f"{type(clip_model).__name__} has no CLIP-style text transformer (token_embedding, "
                     f"positional_embedding, transformer, ln_final)")


def _check_text_tower(tower: nn.Module) -> None:
    """Raise ValueError unless the tower encodes like OpenAI's CLIP (causal mask, argmax-EOT pooling)."""
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool != "argmax":
        raise ValueError(f"its text features are pooled with '{pool}', not at the EOT token (argmax of the ids)")
    if getattr(tower, "cls_emb", None) is not None:
        raise ValueError("its text transformer appends a class token")
    if getattr(tower, "attn_mask", None) is None:
        raise ValueError("its text transformer is not causal (no attention mask)")
    vocab = tower.token_embedding.weight.shape[0]
    if vocab != OPENAI_VOCAB_SIZE:
        raise ValueError(f"its vocabulary has {vocab} tokens, not the {OPENAI_VOCAB_SIZE} of OpenAI's BPE "
                         f"tokenizer")


class TextEncoder(nn.Module):
    """CLIP's text transformer applied to prompt embeddings; returns projected EOT features (not normalised).

    Shares (does not copy) CLIP's modules. Attention is causal, so positions after the last EOT of a batch
    cannot change any EOT feature: the sequence is cut to ``max_eot + 1`` before the transformer
    (``trim_padding=False`` runs the full padded context, as CoOp does; the benchmark's baseline).
    """

    def __init__(self, clip_model: nn.Module, trim_padding: bool = True):
        super().__init__()
        self.trim_padding = trim_padding
        tower = _text_tower(clip_model)
        _check_text_tower(tower)
        self.token_embedding = tower.token_embedding  # nn.Embedding [vocab, W]
        self.positional_embedding = tower.positional_embedding  # Parameter [context_length, W]
        self.transformer = tower.transformer  # open_clip Transformer: takes [N, L, W] whatever batch_first is
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection  # Parameter [W, D], nn.Linear(W, D) or None
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)  # [context_length]^2, -inf above diag

    @property
    def width(self) -> int:
        """Transformer width W (the prompt embedding size)."""
        return int(self.ln_final.weight.shape[0])

    @property
    def embed_dim(self) -> int:
        """Output feature size D."""
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] -> token embeddings [N, L, W] (no positional embedding)."""
        return self.token_embedding(tokens.to(self.token_embedding.weight.device))

    def encode_tokens(self, tokens: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Token ids [N, L] -> text features [N, D]; equals CLIP's ``encode_text`` (unnormalised)."""
        return self.encode_rows(len(tokens), lambda rows: (self.embed(tokens[rows]), tokens[rows]), chunk_size)

    def forward(self, prompt_embeddings: torch.Tensor, tokenized: torch.Tensor,
                chunk_size: Optional[int] = None, checkpoint: bool = False) -> torch.Tensor:
        """Prompt embeddings [N, L, W] and their token ids [N, L] -> EOT features [N, D].

        The EOT position of each row is ``tokenized.argmax(-1)``. ``chunk_size`` and ``checkpoint``: see
        :meth:`encode_rows`.
        """
        if prompt_embeddings.dim() != 3 or tokenized.shape != prompt_embeddings.shape[:2]:
            raise ValueError(f"expected prompt embeddings [N, L, W] and token ids [N, L], got "
                             f"{tuple(prompt_embeddings.shape)} and {tuple(tokenized.shape)}")
        return self.encode_rows(len(tokenized), lambda rows: (prompt_embeddings[rows], tokenized[rows]),
                                chunk_size, checkpoint)

    def encode_rows(self, n_rows: int, make_rows: Callable[[slice], Tuple[torch.Tensor, torch.Tensor]],
                    chunk_size: Optional[int] = None, checkpoint: bool = False) -> torch.Tensor:
        """Features [n_rows, D] of prompts built ``chunk_size`` rows at a time.

        ``make_rows(rows)`` returns the prompt embeddings [n, L, W] and token ids [n, L] of the rows in the
        slice ``rows``; building them inside the chunk loop keeps the assembled prompts of only one chunk
        alive. With ``checkpoint`` (and autograd on), each chunk's activations are recomputed in the
        backward pass instead of kept, so training memory is bounded by the chunk size, not by the number
        of prompts. Results are the same either way (up to float summation order across chunk sizes).
        """
        def encode(rows):
            embeddings, tokens = make_rows(rows)
            if embeddings.shape[1] > self.context_length:
                raise ValueError(f"prompts of length {embeddings.shape[1]} exceed CLIP's context length "
                                 f"{self.context_length}")
            return self._encode(embeddings, tokens)

        use_checkpoint = checkpoint and torch.is_grad_enabled()
        parts = [torch.utils.checkpoint.checkpoint(encode, rows, use_reentrant=False) if use_checkpoint
                 else encode(rows) for rows in _row_chunks(n_rows, chunk_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _encode(self, x: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
        """One chunk: [n, L, W] embeddings, [n, L] ids -> [n, D], computed in the dtype of ``x``."""
        if x.shape[0] == 0:
            return x.new_zeros(0, self.embed_dim)
        eot = tokenized.to(x.device).argmax(dim=-1)  # [n] EOT position of each row
        # causal attention: positions after the last EOT cannot reach any EOT token, so they are cut
        cut = int(eot.max()) + 1 if self.trim_padding else x.shape[1]
        x = x[:, :cut] + self.positional_embedding[:cut].to(x.dtype)  # [n, cut, W]
        mask = self.attn_mask[:cut, :cut].to(device=x.device, dtype=x.dtype)  # [cut, cut]
        x = self.transformer(x, attn_mask=mask)  # [n, cut, W]; open_clip's Transformer is batch-first at its API
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # [n, W] features at the EOT tokens
        x = self.ln_final(x)  # per-token LayerNorm, so applying it after the gather is exact
        return self._project(x)  # [n, D]

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj.to(x.dtype)


def _row_chunks(n: int, chunk_size: Optional[int]) -> list:
    """Slices covering rows 0..n-1, ``chunk_size`` rows each (one slice when None)."""
    if chunk_size is None:
        return [slice(0, n)]
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    return [slice(start, start + int(chunk_size)) for start in range(0, n, int(chunk_size))] or [slice(0, 0)]
