"""What a context-parallel call did, hop by hop: for benchmarks and for understanding a schedule.

    >>> with attnkit.distributed.profile() as hops:
    ...     out = attnkit.distributed.attention(q, k, v, causal=True)
    >>> [(h.hop, h.blocks, h.compute_s, h.wait_s, h.bytes_sent) for h in hops]

Recording costs one clock read per hop; nothing is recorded outside a ``profile`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Hop:
    """One hop of one pass on this process."""

    strategy: str  # "ring" or "ulysses"
    phase: str  # "forward", "backward", or for Ulysses the all-to-all ("all-to-all")
    hop: int  # 0: this process's own keys; t: the keys of rank - t
    peer: int  # the rank whose keys were used (ring), or -1
    blocks: int  # (query chunk, key chunk) pairs computed: 0 when the hop's tiles are all empty
    compute_s: float  # seconds between receiving this hop's keys and asking for the next ones
    compute_cpu_s: float  # this thread's CPU seconds in that time (what the hop cost where processes share cores)
    wait_s: float  # seconds spent waiting for this hop's transfer after the compute it overlapped
    bytes_sent: int
    bytes_received: int


_RECORDER: ContextVar[list[Hop] | None] = ContextVar("attnkit_distributed_profile", default=None)


@contextlib.contextmanager
def profile() -> Iterator[list[Hop]]:
    """Collect a :class:`Hop` for every hop of the distributed attention calls made inside the block."""
    hops: list[Hop] = []
    token = _RECORDER.set(hops)
    try:
        yield hops
    finally:
        _RECORDER.reset(token)


def record(hop: Hop) -> None:
    hops = _RECORDER.get()
    if hops is not None:
        hops.append(hop)


def recording() -> bool:
    return _RECORDER.get() is not None


__all__ = ["Hop", "profile", "record", "recording"]
