"""Talking to the other processes: the group's size and rank, point-to-point transfers that overlap with compute,
all-to-all, and errors that say what failed.

Every wait goes through :func:`guarded`: a peer that died, or one that never reaches the same call, makes the
others raise :class:`PeerError` — within the process group's timeout (``init_process_group(timeout=...)``),
never a silent hang — naming the operation and this rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import torch.distributed as dist
from torch import Tensor

Group: TypeAlias = dist.ProcessGroup | None  # None: the default process group
_T = TypeVar("_T")

# tags of the point-to-point messages (gloo matches on them; NCCL ignores them): k and v, then their gradients
TAG_KV, TAG_DKV = 10, 20


class PeerError(RuntimeError):
    """A transfer or collective with the other processes failed or timed out: a peer failed, or did not make the
    same call (the same arguments on every process) within the process group's timeout."""


def _initialized() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("attnkit.distributed needs torch.distributed to be initialized: call "
                           "torch.distributed.init_process_group(...) first (group=None means its default group)")


def group_size(group: Group) -> int:
    _initialized()
    return dist.get_world_size(group)


def group_rank(group: Group) -> int:
    _initialized()
    return dist.get_rank(group)


def global_rank(group: Group, rank: int) -> int:
    """The default group's rank of ``group``'s rank ``rank`` (what point-to-point operations address)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def guarded(fn: Callable[[], _T], what: str, group: Group) -> _T:
    """``fn()``, with a failure of the communication it does re-raised as a :class:`PeerError` naming ``what``."""
    try:
        return fn()
    except RuntimeError as error:  # torch's DistBackendError (timeouts, closed connections) is a RuntimeError
        rank = dist.get_rank(group) if dist.is_initialized() else "?"
        raise PeerError(
            f"attnkit.distributed: {what} failed on rank {rank} of {dist.get_world_size(group)}: {error}. A peer "
            "process failed, or did not reach the same call with the same arguments within the process group's "
            "timeout (init_process_group(timeout=...))") from error


@dataclass
class Transfer:
    """Point-to-point sends and receives in flight; ``wait()`` returns the received tensors."""

    works: list[Any]
    received: list[Tensor]
    what: str
    group: Group
    bytes_sent: int = 0
    bytes_received: int = field(default=0)

    def wait(self) -> list[Tensor]:
        def wait_all() -> None:
            for work in self.works:
                work.wait()
        guarded(wait_all, self.what, self.group)
        self.works = []
        return self.received


def exchange(send: Sequence[Tensor], dst: int | None, recv: Sequence[Tensor], src: int | None, *,
             group: Group, tag: int, what: str) -> Transfer:
    """Start sending ``send`` to group rank ``dst`` and receiving into ``recv`` from ``src`` (either may be
    empty), as one ``batch_isend_irecv``; the tensors must stay untouched until ``wait()``."""
    ops = [dist.P2POp(dist.isend, t, global_rank(group, dst), group, tag=tag + i)
           for i, t in enumerate(send) if dst is not None]
    ops += [dist.P2POp(dist.irecv, t, global_rank(group, src), group, tag=tag + i)
            for i, t in enumerate(recv) if src is not None]
    works = guarded(lambda: dist.batch_isend_irecv(ops), what, group) if ops else []
    sent = sum(t.numel() * t.element_size() for t in send) if dst is not None else 0
    received = sum(t.numel() * t.element_size() for t in recv) if src is not None else 0
    return Transfer(list(works or []), list(recv), what, group, sent, received)


def all_to_all(chunks: Sequence[Tensor], group: Group, what: str) -> list[Tensor]:
    """Send ``chunks[j]`` to rank j and return what each rank sent here, in rank order (same shapes)."""
    out = [chunk.new_empty(chunk.shape) for chunk in chunks]
    guarded(lambda: dist.all_to_all(out, [c.contiguous() for c in chunks], group=group), what, group)
    return out


def all_reduce_sum(t: Tensor, group: Group, what: str) -> Tensor:
    guarded(lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group), what, group)
    return t


__all__ = ["Group", "PeerError", "Transfer", "exchange", "all_to_all", "all_reduce_sum", "group_size", "group_rank",
           "global_rank", "guarded", "TAG_KV", "TAG_DKV"]
