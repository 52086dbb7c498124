"""One row of a benchmark sweep: a contender's timing on one configuration, with its throughput, ratios and memory.
``bench.sweep`` fills rows, ``bench.report`` prints and writes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .measure import Timed


@dataclass
class Row(Timed):
    n: int
    mask: str  # as the caller names it
    mode: str  # fwd | fwdbwd
    kernel: str  # attnkit:<name> | torch:sdpa | torch:flex
    label: str
    case: str = ""  # the contenders.MASKS name it ran (the same as mask in `attnkit bench`)
    status: str = "ok"  # ok | skipped | failed
    note: str = ""
    visible: int | None = None  # (query, key) pairs that may attend, per (batch, head)
    gflops: float | None = None  # over the visible entries
    pct_of_matmul: float | None = None  # of the best matmul probe
    peer: str = ""  # label of the peer the ratio is against
    peer_kernel: str = ""
    ratio: float | None = None  # median over rounds of peer time / this time: > 1 = faster than the peer
    ratio_min: float | None = None
    ratio_max: float | None = None
    vs: dict = field(default_factory=dict)  # every peer that ran: contender -> [median, min, max]
    mem_call_peak_mib: float | None = None  # VmHWM during one call minus RSS before it
    mem_ru_maxrss_mib: float | None = None  # whole child process: the torch import, inputs and the call
    mem_note: str = ""

    @property
    def config(self) -> str:
        return f"N={self.n} {self.mask} {self.mode}"


__all__ = ["Row"]
