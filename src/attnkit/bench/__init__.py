"""Benchmarks that hold on noisy machines: ratios against named peers timed in the same run, round-robin,
gated on a matmul probe, with the machine and versions beside them (BENCHMARKING.md).

- ``measure``: the probe, round-robin timing, peak memory in a process of its own;
- ``counting``: visible (query, key) pairs of a mask and the FLOPs over them;
- ``contenders``: the masks, inputs and calls that are timed (attnkit kernels, torch SDPA, FlexAttention);
- ``rows``: one contender's timing on one configuration;
- ``report``: tables, legends, CSV/JSON and plots of rows;
- ``sweep``: ``attnkit bench`` — kernels x lengths x masks x modes, with its header, report and files.

    >>> from attnkit.bench import Sweep, SweepOptions
    >>> result = Sweep(SweepOptions.build(quick=True)).run()
    >>> print(result.report())
"""

from .progress import Progress
from .rows import Row
from .sweep import Sweep, SweepOptions, SweepResult

__all__ = ["Progress", "Row", "Sweep", "SweepOptions", "SweepResult"]
