"""Data and context parallelism on torch.distributed: the process group of a run started by torchrun (gloo on CPU,
NCCL on CUDA), and ``launch``, which starts such a run from a plain command (``attnkit train ... --nproc N``).

Every process holds the whole model; each computes the gradients of its part of the global batch and DDP
averages them. With context parallelism of size C, ranks ``C*g ... C*g + C - 1`` form group g: they take the same
part of the batch, each holds its part of every sequence, and the N/C groups are the data-parallel replicas::

    N = 4, C = 2    rank       0  1  2  3
                    replica    0  0  1  1     (the part of the global batch)
                    in group   0  1  0  1     (the part of each sequence)

A process that dies is noticed by torchrun's agent, which stops the others; a collective that waits longer than
the timeout (a peer that hangs) raises in the survivors.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes and the device it computes on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    context: int = 1  # processes that share one sequence (context parallelism), consecutive ranks

    @property
    def main(self) -> bool:
        """Only the main process logs, draws the progress bar and writes files."""
        return self.rank == 0

    @property
    def replicas(self) -> int:
        """The data-parallel degree: how many parts the global batch is cut into."""
        return self.size // self.context

    @property
    def replica(self) -> int:
        """Which part of the global batch this process takes (its context-parallel group)."""
        return self.rank // self.context


def from_environment(timeout_s: float, context: int = 1) -> World:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, ...), joined; one process
    (no group) when there is none. ``context``: processes per sequence; a ValueError unless it divides them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size % context:
        raise ValueError(f"TrainConfig.context_parallel.size={context} needs a multiple of {context} processes, "
                         f"this run has {size}: start them with attnkit train --nproc (or torchrun)")
    if size == 1:
        return World()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), device, context)


def context_group(world: World, timeout_s: float) -> dist.ProcessGroup:
    """This process's context-parallel group (its ``world.context`` consecutive ranks). Every process creates
    every group, in the same order, as torch.distributed requires. A group of its own even when it holds every
    rank: the ring's transfers then never share a communicator with DDP's all-reduces."""
    timeout = datetime.timedelta(seconds=timeout_s)
    groups = [dist.new_group(list(range(first, first + world.context)), timeout=timeout)
              for first in range(0, world.size, world.context)]
    return groups[world.replica]  # the others are placeholders here: torch.distributed keeps only this one


def destroy(group: dist.ProcessGroup | None) -> None:
    """Free a group of :func:`context_group` (its connections; torch.distributed forgets it). Each process frees
    its own, without waiting for the others: a ``fit`` per group, however many runs a process makes."""
    if group is not None and dist.is_initialized():
        dist.destroy_process_group(group)


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` summed over every process (itself when there is one), reduced on the group's device (NCCL
    takes CUDA tensors only) and returned on ``value``'s."""
    if world.size > 1:
        reduced = value.to(world.device, copy=True)
        dist.all_reduce(reduced)
        value = reduced.to(value.device)
    return value


def launch(nproc: int, module_args: list[str]) -> int:
    """Run ``python -m attnkit <module_args>`` in ``nproc`` processes through torchrun's launcher on this
    machine and return its exit status (non-zero when any process failed: the agent stops the others)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", "-m", "attnkit", *module_args]  # standalone: a free local port of its own
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, _cpus() // nproc)))}
    return subprocess.call(command, env=env)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["World", "from_environment", "context_group", "destroy", "all_sum", "launch"]
