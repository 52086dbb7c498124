"""Sentence embeddings: mean pooling over each sentence's tokens, L2-normalized (the sentence-transformers
recipe), computed with no FLOP spent on padding.

Sentences are sorted by length, and each batch is packed into one row: the sentences stand one after
another, each with positions from 0, and ``attnkit.masks.document`` keeps their attention apart. The
encoder therefore sees exactly the tokens of the sentences — no pad tokens in any matmul.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from . import hub
from .functional import masks
from .functional.checks import check_int
from .models.bert import BERT

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@functools.lru_cache(maxsize=4)
def _load(name: str):
    return hub.load(name)


def _resolve(model) -> tuple[BERT, object]:
    if model is None or isinstance(model, str):
        return _load(DEFAULT_MODEL if model is None else model)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise TypeError(f"model must be None (the bundled MiniLM), a name or path, or a (model, tokenizer) pair; "
                    f"got {type(model).__name__}")


def _token_lists(tokenizer, sentences: Sequence[str]) -> list[Tensor]:
    """Each sentence's token ids, truncated at the tokenizer's limit, unpadded."""
    return [torch.tensor(row, dtype=torch.long) for row in tokenizer.ids(list(sentences))]


def _embed_packed(model: BERT, batch: list[Tensor]) -> Tensor:
    """Sentences' token ids -> their mean-pooled embeddings (len(batch), dim), from one packed row."""
    lengths = torch.tensor([len(t) for t in batch])
    ids = torch.cat(batch)[None]  # (1, T)
    doc = torch.repeat_interleave(torch.arange(len(batch)), lengths)  # (T,) sentence of each token
    starts = torch.cumsum(lengths, 0) - lengths
    positions = (torch.arange(ids.shape[1]) - starts[doc])[None]  # (1, T) from 0 in each sentence
    # no attention_mask: with position_ids BERT applies no key padding (the row holds none), so each layer
    # uses the document mask as it is instead of ANDing a dense all-True padding into it
    hidden = model(ids, position_ids=positions, mask=masks.document(doc[None])).last_hidden_state[0]  # (T, dim)
    sums = hidden.new_zeros(len(batch), hidden.shape[1]).index_add_(0, doc, hidden)
    return sums / lengths[:, None].to(hidden.dtype)


def _embed_padded(model: BERT, batch: list[Tensor], pad_id: int) -> Tensor:
    """The same with a padded (B, L) batch: the reference that packing must equal."""
    width = max(len(t) for t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, t in enumerate(batch):
        ids[row, :len(t)], mask[row, :len(t)] = t, 1
    hidden = model(ids, mask).last_hidden_state  # (B, L, dim)
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


@torch.no_grad()
def embed(sentences: Sequence[str], model=None, batch_size: int = 32, *, normalize: bool = True,
          pack: bool = True) -> Tensor:
    """Sentence embeddings (len(sentences), dim) in input order.

    Args:
        sentences: the texts.
        model: None for the bundled all-MiniLM-L6-v2, a name or directory for ``attnkit.hub.load``, or a
            (BERT model, tokenizer) pair.
        batch_size: sentences per forward pass (sorted by length first).
        normalize: L2-normalize each embedding (as sentence-transformers' all-MiniLM-L6-v2 does).
        pack: pack each batch into one padding-free row (default); False runs padded batches.

    Example:
        >>> e = attnkit.embed(["The cat sat.", "A cat was sitting."])     # (2, 384)
        >>> float(e[0] @ e[1])                                           # cosine similarity
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of strings (wrap a single sentence in a list)")
    check_int("batch_size", batch_size)
    bert, tokenizer = _resolve(model)
    if not isinstance(bert, BERT):
        raise TypeError(f"embed needs an encoder (BERT family), got {type(bert).__name__}")
    if not sentences:
        return torch.zeros(0, bert.config.dim)
    tokens = _token_lists(tokenizer, sentences)
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    out = torch.empty(len(tokens), bert.config.dim)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = [tokens[i] for i in index]
        vectors = _embed_packed(bert, batch) if pack else _embed_padded(bert, batch, tokenizer.pad_id)
        out[index] = vectors.float()
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


__all__ = ["embed", "DEFAULT_MODEL"]
