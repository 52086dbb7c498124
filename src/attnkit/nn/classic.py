"""The classic attention modules: Bahdanau (additive) and Luong attention, Yang et al.'s attention pooling
and the hierarchical attention network core built from it.

The modules hold parameters; the attention math is ``attnkit.functional.classic``'s. Masks are bool with
True = may attend; a query (or a pooled sequence) that may attend to nothing gets zero weights and a zero
output, and values stored at masked positions — even NaN — never reach outputs or gradients.

    >>> attn = AdditiveAttention(query_dim=8, key_dim=6, attn_dim=5)
    >>> out, w = attn(torch.randn(2, 8), torch.randn(2, 7, 6))   # one query per row
    >>> out.shape, w.shape
    (torch.Size([2, 6]), torch.Size([2, 7]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..functional.checks import check_int
from ..functional.classic import additive_attention, luong_attention, project_keys
from ..functional.kernels.common import zero_hidden


def _require_tensor(name: str, t: object) -> Tensor:
    """``t`` itself, typed as a Tensor; anything else raises."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _require_bool_mask(mask: object) -> Tensor:
    tensor = _require_tensor("mask", mask)
    if tensor.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {tensor.dtype}")
    return tensor


def _check_mask(mask: object, shape: tuple[int, ...], what: str) -> None:
    """``mask`` must be a bool tensor of exactly ``shape`` (``what`` names that shape for the message)."""
    tensor = _require_bool_mask(mask)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"mask must have shape {what} = {shape}, got {tuple(tensor.shape)}")


def _prepare(query: Tensor, keys: Tensor, values: Tensor | None, mask: Tensor | None, query_dim: int,
             key_dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None, bool]:
    """Validate a classic-attention call and bring it to (..., Nq, D) form.

    Returns (q (..., Nq, Dq), k (..., Nk, Dk), v (..., Nk, Dv), mask (..., Nq|1, Nk) or None, single) where
    ``single`` says the caller gave one query per row (``query`` one dim shorter than ``keys``)."""
    for name, t in (("query", query), ("keys", keys)):
        _require_tensor(name, t)
    values = keys if values is None else values
    _require_tensor("values", values)
    if keys.dim() < 2 or keys.shape[-1] != key_dim:
        raise ValueError(f"keys must have shape (..., Nk, key_dim={key_dim}), got {tuple(keys.shape)}")
    if query.dim() not in (keys.dim() - 1, keys.dim()) or query.shape[-1] != query_dim:
        raise ValueError(f"query must have shape (..., query_dim={query_dim}) or (..., Nq, {query_dim}) with "
                         f"the leading dims of keys {tuple(keys.shape)}, got {tuple(query.shape)}")
    if values.dim() < 2 or values.shape[-2] != keys.shape[-2]:
        raise ValueError(f"values must have shape (..., Nk={keys.shape[-2]}, Dv), got {tuple(values.shape)}")
    single = query.dim() == keys.dim() - 1
    q = query.unsqueeze(-2) if single else query  # (..., Nq, Dq)
    try:
        lead = torch.broadcast_shapes(q.shape[:-2], keys.shape[:-2], values.shape[:-2])
    except RuntimeError:
        raise ValueError(f"leading dims of query {tuple(query.shape)}, keys {tuple(keys.shape)} and values "
                         f"{tuple(values.shape)} do not broadcast") from None
    if mask is not None:
        mask = _key_or_full_mask(mask, (*lead, q.shape[-2], keys.shape[-2]), keys.dim())
    return q, keys, values, mask, single


def _key_or_full_mask(mask: Tensor, scores_shape: tuple[int, ...], key_rank: int) -> Tensor:
    """A mask with one dim fewer than keys is a key mask (..., Nk) -> (..., 1, Nk); one with as many dims
    as keys is (..., Nq|1, Nk). Either must broadcast to ``scores_shape`` (..., Nq, Nk)."""
    _require_bool_mask(mask)
    if mask.dim() not in (key_rank - 1, key_rank) or mask.shape[-1] != scores_shape[-1]:
        raise ValueError(f"mask must be a key mask (..., Nk={scores_shape[-1]}) or broadcast to (..., Nq, Nk) "
                         f"= {scores_shape}, got {tuple(mask.shape)}")
    mask = mask.unsqueeze(-2) if mask.dim() == key_rank - 1 else mask  # (..., Nq|1, Nk)
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (..., Nq, Nk) = "
                         f"{scores_shape}") from None
    return mask


def _finish(output: Tensor, weights: Tensor, single: bool) -> tuple[Tensor, Tensor]:
    return (output.squeeze(-2), weights.squeeze(-2)) if single else (output, weights)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2014: score(q, k) = wᵀ tanh(W_q q + W_k k), softmax over the visible keys.

    Args:
        query_dim: Dq, the size of each query.
        key_dim: Dk, the size of each key.
        attn_dim: A, the size of the hidden layer the score is read from.

    ``forward(query, keys, values=None, *, mask=None) -> (output, weights)``:
        query: (..., Nq, Dq), or (..., Dq) for one query per row (outputs then drop the Nq dim).
        keys: (..., Nk, Dk); values: (..., Nk, Dv), default ``keys``.
        mask: bool, a key mask (..., Nk) or one broadcastable to (..., Nq, Nk); True = may attend.
        projected_keys: (..., Nk, A), ``project_keys(keys, mask=mask)`` computed once for keys that many
            calls attend to (a decoder's every step); the result is the same as without it.
        Returns output (..., [Nq,] Dv) and weights (..., [Nq,] Nk).

        >>> attn = AdditiveAttention(4, 6, 5)
        >>> out, w = attn(torch.randn(2, 3, 4), torch.randn(2, 7, 6), mask=torch.rand(2, 7) > 0.3)
        >>> out.shape, w.shape
        (torch.Size([2, 3, 6]), torch.Size([2, 3, 7]))
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            check_int(name, value)
        self.query_dim, self.key_dim, self.attn_dim = query_dim, key_dim, attn_dim
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W_q (A, Dq)
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)  # W_k (A, Dk)
        bound = 1.0 / math.sqrt(attn_dim)
        self.score = nn.Parameter(torch.empty(attn_dim).uniform_(-bound, bound))  # w (A,)

    def project_keys(self, keys: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """W_k keys, (..., Nk, Dk) -> (..., Nk, A): the half of the score that does not depend on the query,
        for ``forward(..., projected_keys=)``. Pass the ``mask`` those calls use (a key mask (..., Nk) or
        (..., Nq|1, Nk)) so that non-finite keys no query may see cannot reach ``key_proj``'s gradient."""
        _require_tensor("keys", keys)
        if keys.dim() < 2 or keys.shape[-1] != self.key_dim:
            raise ValueError(f"keys must have shape (..., Nk, key_dim={self.key_dim}), got {tuple(keys.shape)}")
        if mask is not None:
            mask = _key_or_full_mask(mask, (*keys.shape[:-2], 1, keys.shape[-2]), keys.dim())  # (..., Nq|1, Nk)
        return project_keys(keys, self.key_proj.weight, mask)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, mask: Tensor | None = None,
                projected_keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v, mask, single = _prepare(query, keys, values, mask, self.query_dim, self.key_dim)
        w_k: Tensor | None = self.key_proj.weight  # None: k is already projected
        if projected_keys is not None:
            _require_tensor("projected_keys", projected_keys)
            if projected_keys.shape != (*keys.shape[:-1], self.attn_dim):
                raise ValueError(f"projected_keys must have shape (..., Nk, attn_dim) = "
                                 f"{(*keys.shape[:-1], self.attn_dim)} from project_keys(keys), got "
                                 f"{tuple(projected_keys.shape)}")
            k, w_k = projected_keys, None
        output, weights = additive_attention(q, k, v, self.query_proj.weight, w_k, self.score,
                                             mask)  # (..., Nq, Dv), (..., Nq, Nk)
        return _finish(output, weights, single)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, attn_dim={self.attn_dim}"


class LuongAttention(nn.Module):
    """Luong et al. 2015: ``dot`` score q·k (needs Dq == Dk) or ``general`` qᵀ W k with W (Dq, Dk).

    Same ``forward`` as :class:`AdditiveAttention`.

        >>> attn = LuongAttention(4, 6, method="general")
        >>> out, w = attn(torch.randn(2, 4), torch.randn(2, 7, 6))
        >>> out.shape, w.shape
        (torch.Size([2, 6]), torch.Size([2, 7]))
    """

    def __init__(self, query_dim: int, key_dim: int, method: Literal["dot", "general"] = "dot") -> None:
        super().__init__()
        check_int("query_dim", query_dim)
        check_int("key_dim", key_dim)
        if method not in ("dot", "general"):
            raise ValueError(f"method must be 'dot' or 'general', got {method!r}")
        if method == "dot" and query_dim != key_dim:
            raise ValueError(f"method='dot' needs query_dim == key_dim, got {query_dim} and {key_dim}; "
                             f"use method='general'")
        self.query_dim, self.key_dim, self.method = query_dim, key_dim, method
        self.weight: nn.Parameter | None = None
        if method == "general":
            bound = 1.0 / math.sqrt(query_dim)
            self.weight = nn.Parameter(torch.empty(query_dim, key_dim).uniform_(-bound, bound))  # W (Dq, Dk)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v, mask, single = _prepare(query, keys, values, mask, self.query_dim, self.key_dim)
        output, weights = luong_attention(q, k, v, self.method, self.weight, mask)  # (..., Nq, Dv), (..., Nq, Nk)
        return _finish(output, weights, single)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, method={self.method!r}"


class AttentionPooling(nn.Module):
    """Yang et al. 2016's attention pooling: u_i = tanh(W h_i + b), weights = softmax_i(u_i · u_w) over the
    unmasked items with a learned context vector u_w, pooled = Σ_i weights_i h_i.

    The score is Luong's dot score with u_w as the single query and the u_i as keys.

    ``forward(items, mask=None) -> (pooled, weights)``: items (..., N, dim), mask bool (..., N) with
    True = a real item; returns pooled (..., dim) and weights (..., N). A sequence with no real item pools
    to a zero vector with zero weights.

        >>> pool = AttentionPooling(dim=6, attn_dim=4)
        >>> pooled, w = pool(torch.randn(2, 5, 6), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]).bool())
        >>> pooled.shape, w.sum(-1)
        (torch.Size([2, 6]), tensor([1., 0.], grad_fn=<SumBackward1>))
    """

    def __init__(self, dim: int, attn_dim: int) -> None:
        super().__init__()
        check_int("dim", dim)
        check_int("attn_dim", attn_dim)
        self.dim, self.attn_dim = dim, attn_dim
        self.proj = nn.Linear(dim, attn_dim)  # W (A, dim), b (A,)
        bound = 1.0 / math.sqrt(attn_dim)
        self.context = nn.Parameter(torch.empty(attn_dim).uniform_(-bound, bound))  # u_w (A,)

    def forward(self, items: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _require_tensor("items", items)
        if items.dim() < 2 or items.shape[-1] != self.dim:
            raise ValueError(f"items must have shape (..., N, dim={self.dim}), got {tuple(items.shape)}")
        key_mask = None
        if mask is not None:
            _check_mask(mask, tuple(items.shape[:-1]), "(..., N)")
            items = zero_hidden(items, mask[..., None])  # NaN at padding would reach proj's gradient
            key_mask = mask[..., None, :]  # (..., 1, N)
        u = torch.tanh(self.proj(items))  # (..., N, A)
        query = self.context.expand(*u.shape[:-2], 1, self.attn_dim)  # (..., 1, A)
        pooled, weights = luong_attention(query, u, items, "dot", mask=key_mask)  # (..., 1, dim), (..., 1, N)
        return pooled.squeeze(-2), weights.squeeze(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, attn_dim={self.attn_dim}"


def packed_rnn(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run a ``batch_first`` RNN over only the real items of each row, so padding never leaks in.

    The real items of a row (mask True) are read in order as one sequence, wherever the padding sits;
    rows without any real item are not run at all.

    Args:
        rnn: an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` built with ``batch_first=True``.
        x: (n, L, D) inputs; mask: bool (n, L), True = real item.

    Returns:
        outputs (n, L, dirs * H), zero at padded positions; h_n (layers * dirs, n, H), zero for empty rows
        (for an LSTM only h_n, not c_n).
    """
    if not rnn.batch_first:
        raise ValueError("rnn must be built with batch_first=True")
    n, length, _ = x.shape
    dirs = 2 if rnn.bidirectional else 1
    lengths = mask.sum(dim=-1)  # (n,)
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)  # (n, L): real items first, in order
    x = torch.where(mask[..., None], x, 0).gather(1, order[..., None].expand_as(x))  # (n, L, D) compacted
    outputs = x.new_zeros(n, length, dirs * rnn.hidden_size)
    h_n = x.new_zeros(rnn.num_layers * dirs, n, rnn.hidden_size)
    rows = (lengths > 0).nonzero().squeeze(-1)  # rows with something to read
    if rows.numel():
        packed = pack_padded_sequence(x[rows], lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
        y, h = rnn(packed)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h_n, c_n)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=length)  # (rows, L, dirs * H)
        outputs = outputs.index_copy(0, rows, y)
        h_n = h_n.index_copy(1, rows, h)
    index = order[..., None].expand_as(outputs)  # compacted position j came from position order[j]
    return torch.zeros_like(outputs).scatter(1, index, outputs), h_n


@dataclass
class HierarchicalOutput:
    """What :class:`HierarchicalAttention` returns (D = 2 * hidden with the GRU encoders)."""

    document: Tensor  # (B, D) the document vector; zero for a document without any word
    sentences: Tensor  # (B, S, D) sentence vectors from word attention (before the sentence encoder)
    word_weights: Tensor  # (B, S, W) sums to 1 over each sentence's real words; 0 at padding
    sentence_weights: Tensor  # (B, S) sums to 1 over the document's real sentences; 0 at padding


class HierarchicalAttention(nn.Module):
    """Yang et al. 2016's hierarchical attention network core: words -> sentences -> document.

    Each sentence's words go through a bidirectional GRU and :class:`AttentionPooling` into a sentence
    vector; the sentence vectors go through a second bidirectional GRU and pooling into a document vector.
    Only real words (and sentences with at least one real word) are read: padding never changes an output.

    Args:
        word_dim: size of each input word vector.
        hidden: GRU size per direction; outputs have size ``2 * hidden``.
        attn_dim: size of the pooling layers' u vectors.
        encoder: ``"gru"`` (the paper) or ``None`` to pool the word vectors themselves (outputs then have
            size ``word_dim`` and ``hidden`` is unused).

    ``forward(words, word_mask=None)``: words (B, S, W, word_dim), word_mask bool (B, S, W) with
    True = a real word (default: all real). Returns :class:`HierarchicalOutput`.

        >>> han = HierarchicalAttention(word_dim=8, hidden=5, attn_dim=6)
        >>> out = han(torch.randn(2, 3, 4, 8), torch.rand(2, 3, 4) > 0.3)
        >>> out.document.shape, out.word_weights.shape, out.sentence_weights.shape
        (torch.Size([2, 10]), torch.Size([2, 3, 4]), torch.Size([2, 3]))
    """

    def __init__(self, word_dim: int, hidden: int, attn_dim: int, *,
                 encoder: Literal["gru"] | None = "gru") -> None:
        super().__init__()
        for name, value in (("word_dim", word_dim), ("hidden", hidden), ("attn_dim", attn_dim)):
            check_int(name, value)
        if encoder not in ("gru", None):
            raise ValueError(f"encoder must be 'gru' or None, got {encoder!r}")
        self.word_dim = word_dim
        self.output_dim = 2 * hidden if encoder == "gru" else word_dim
        self.word_encoder: nn.GRU | None = None
        self.sentence_encoder: nn.GRU | None = None
        if encoder == "gru":
            self.word_encoder = nn.GRU(word_dim, hidden, batch_first=True, bidirectional=True)
            self.sentence_encoder = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.word_pool = AttentionPooling(self.output_dim, attn_dim)
        self.sentence_pool = AttentionPooling(self.output_dim, attn_dim)

    @staticmethod
    def _encode(rnn: nn.GRU | None, x: Tensor, mask: Tensor) -> Tensor:
        """(n, L, D) -> (n, L, D_out), zero at padded positions."""
        return torch.where(mask[..., None], x, 0) if rnn is None else packed_rnn(rnn, x, mask)[0]

    def forward(self, words: Tensor, word_mask: Tensor | None = None) -> HierarchicalOutput:
        _require_tensor("words", words)
        if words.dim() != 4 or words.shape[-1] != self.word_dim:
            raise ValueError(f"words must have shape (B, S, W, word_dim={self.word_dim}), got "
                             f"{tuple(words.shape)}")
        B, S, W, _ = words.shape
        if word_mask is None:
            word_mask = torch.ones(B, S, W, dtype=torch.bool, device=words.device)
        _check_mask(word_mask, (B, S, W), "(B, S, W)")
        flat_mask = word_mask.reshape(B * S, W)
        h = self._encode(self.word_encoder, words.reshape(B * S, W, self.word_dim), flat_mask)  # (B*S, W, D)
        sentences, word_weights = self.word_pool(h, flat_mask)  # (B*S, D), (B*S, W)
        sentences = sentences.reshape(B, S, self.output_dim)  # (B, S, D)
        sentence_mask = word_mask.any(dim=-1)  # (B, S): a sentence is real if any of its words is
        h = self._encode(self.sentence_encoder, sentences, sentence_mask)  # (B, S, D)
        document, sentence_weights = self.sentence_pool(h, sentence_mask)  # (B, D), (B, S)
        return HierarchicalOutput(document, sentences, word_weights.reshape(B, S, W), sentence_weights)


__all__ = ["AdditiveAttention", "LuongAttention", "AttentionPooling", "HierarchicalAttention",
           "HierarchicalOutput", "packed_rnn"]
