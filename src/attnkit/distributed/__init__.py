"""Context parallelism over torch.distributed: exact attention on a sequence split across processes.

- ``attention(q, k, v, ..., strategy="ring" | "ulysses", layout="zigzag" | "contiguous")``: each process passes its
  shard of the sequence and gets its shard of what ``attnkit.attention`` gives on the whole sequence, masks and biases
  in global positions, forward and backward.
- ``shard`` / ``gather``: between a whole tensor and this process's part of it under a layout.
- ``keep_mask``: the dropout decision as a mask, to reproduce a distributed dropout result on one process.
- ``profile``: per-hop compute, wait and bytes of the calls inside a ``with`` block.

See docs/context-parallel.md for how ring, zigzag and Ulysses work here.
"""

from .attention import STRATEGIES, Strategy, attention
from .comm import PeerError
from .dropout import keep_mask
from .layout import LAYOUTS, LayoutName, gather, shard
from .profile import Hop, profile
from .setting import ContextParallel

__all__ = ["attention", "shard", "gather", "keep_mask", "profile", "Hop", "PeerError", "Strategy", "STRATEGIES",
           "LayoutName", "LAYOUTS", "ContextParallel"]
