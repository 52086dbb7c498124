"""The training loop: :func:`fit` trains a :class:`~attnkit.train.task.Task` for ``config.steps`` optimizer steps.

One step, on each of the W processes (W = 1 without torchrun), R = W / C data-parallel replicas of C processes
each (C = 1 without context parallelism)::

    indices = order.step(step)                         # the global batch, a function of (seed, step)
    for micro in shard(indices, rank // C, R, accumulation):
        batch = task.batch(micro)                      # the same on the C processes of a replica
        batch = task.split(batch, setting)             # with C > 1: this process's part of each sequence
        loss = task.loss(model, batch)                 # a sum over (this part's) items, and their count
        loss.total.backward()                          # DDP averages the gradients over all W processes
    total, count = all_sum(...)                        # over the global batch
    grads *= W / count                                 # = d(total / count): the mean over the global batch
    clip; lr = config.learning_rate(step); AdamW step

Why ``W / count`` holds with context parallelism too: process p's gradient g_p is that of its summed loss over
its items (its micro-batches' part of each sequence: attention's backward sends each key's gradient to the
process that holds it). The global batch's summed loss is the sum over all W processes' items, so its gradient
is sum_p g_p; DDP gives sum_p g_p / W on every process, and ``W / count`` turns it into the mean over the
global batch's ``count`` items: summed over each context-parallel group, averaged over the replicas.

Files in ``out`` (main process only): ``metrics.jsonl`` (one JSON object per logged step and per evaluation),
``loss.png``, and ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end. ``resume=True`` continues
from ``checkpoint.pt`` so that the run ends bitwise identical to one never interrupted. SIGINT (Ctrl-C)
finishes the current step, writes a checkpoint and returns with ``interrupted=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import ContextParallel
from ..files import write_text
from ..nn import context_parallel_layers, use_context_parallel
from . import checkpoint, parallel
from .config import TrainConfig
from .parallel import World
from .task import Order, Task, shard

METRICS = "metrics.jsonl"


@dataclass
class Result:
    """How a run ended."""

    step: int  # optimizer steps done
    loss: float  # training loss of the last step (mean over its global batch)
    evaluation: dict[str, float] = field(default_factory=dict)  # the last evaluation
    resumed_from: int | None = None  # the checkpoint's step when the run resumed
    interrupted: bool = False  # stopped by SIGINT after writing a checkpoint


class PeerFailure(RuntimeError):
    """Another process of the run stopped or stalled: this one cannot go on."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: weight matrices and embeddings (2+ dims) decay; biases and norm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


class _Stop:
    """SIGINT sets a flag that the loop reads between steps; a second SIGINT interrupts at once, except in a
    process of several: there torchrun's agent forwards the same Ctrl-C that the terminal already delivered."""

    def __init__(self, patient: bool) -> None:
        self.requested = False
        self.patient = patient

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and not self.patient:
            raise KeyboardInterrupt
        self.requested = True


class _Log:
    """metrics.jsonl and the progress bar, on the main process."""

    def __init__(self, out: Path | None, world: World, config: TrainConfig, task: Task, start: int,
                 progress: bool, name: str) -> None:
        self.path = out / METRICS if out is not None and world.main else None
        self.unit = task.unit
        self.bar = None
        if progress and world.main:
            from tqdm.auto import tqdm  # a maintained progress bar: ETA, rate and terminal handling

            self.bar = tqdm(total=config.steps, initial=start, desc=name or "train", unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=True)

    def write(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(row) + "\n")

    def step(self, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} {self.unit}/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keep_metrics(out: Path, upto: int, finished: bool) -> None:
    """On resume: drop the rows a killed run logged after its last checkpoint, and a finished run's final
    evaluation (each is logged again)."""
    rows = [row for row in read_metrics(out)
            if row["step"] < upto or (row["step"] == upto and not (finished and row.get("kind") == "eval"))]
    write_text(out / METRICS, "".join(json.dumps(row) + "\n" for row in rows))


class _Run:
    """The state of one fit: model, optimizer, data order, step; and the operations on it."""

    def __init__(self, task: Task, config: TrainConfig, out: Path | None, world: World) -> None:
        self.task, self.config, self.out, self.world = task, config, out, world
        self.model = task.model.to(world.device).train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, config.weight_decay), lr=config.lr,
                                           betas=config.betas)
        self.order = Order(task.size, config.batch_size, config.seed)
        config.micro_batch(world.replicas)  # refuse a batch that does not split, before anything runs
        self.step = 0
        self.setting = _context_parallel(task, config, world)
        self.trained: nn.Module = self.model
        if world.size > 1:  # over every process: the sum of the replicas' and of the groups' parts (see above)
            try:
                self.trained = DistributedDataParallel(self.model)  # a collective: raises when a peer is gone
            except BaseException:
                self.release()  # fit has no run to release yet
                raise

    def state(self) -> dict[str, Any]:
        rngs = [checkpoint.rng_state()]
        if self.world.size > 1:
            rngs = [None] * self.world.size  # type: ignore[list-item]
            dist.all_gather_object(rngs, checkpoint.rng_state())
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rngs, "config": self.config.to_dict(), "world_size": self.world.size}  # the lr: config, step

    def save(self) -> None:
        state = self.state()  # every process takes part (the RNG states are gathered)
        if self.out is not None and self.world.main:
            checkpoint.save(self.out / checkpoint.NAME, state)

    def restore(self, state: dict[str, Any], path: Path) -> None:
        check_parallel(state, path, self.world.size, self.config.context_size)
        saved = TrainConfig.from_dict(state["config"])
        now = self.config.to_dict()
        differs = [k for k, v in saved.to_dict().items() if k != "checkpoint_every" and v != now[k]]
        if differs:
            raise ValueError(f"--resume: the checkpoint was written with other settings ({', '.join(differs)}); "
                             "resume with the same ones or start in another --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"][self.world.rank])
        self.step = int(state["step"])

    def train_step(self, stop: _Stop) -> tuple[float, float, bool]:
        """One optimizer step; returns (loss, items, whether any process was asked to stop during it)."""
        c, world = self.config, self.world
        for group in self.optimizer.param_groups:
            group["lr"] = c.learning_rate(self.step)
        micro = shard(self.order.step(self.step), world.replica, world.replicas, c.accumulation)
        # summed loss, item count, the rate's items: added on the device, read once after the all-reduce (no sync
        # per micro-batch on CUDA)
        total = torch.zeros(3, dtype=torch.float64, device=world.device)
        for i, indices in enumerate(micro):
            batch = self.task.batch(indices)
            if self.setting is not None:
                assert self.task.split is not None  # _context_parallel checked it
                batch = self.task.split(batch, self.setting)
            sync: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if isinstance(self.trained, DistributedDataParallel) and i < len(micro) - 1:
                sync = self.trained.no_sync()  # gradients summed locally; the last micro-batch all-reduces
            with sync:
                with torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=c.precision == "bfloat16"):
                    loss = self.task.loss(self.trained, batch)
                loss.total.backward()  # outside autocast, as PyTorch advises
            # the rate's items: this part's (they sum to the batch's), or the examples, which a group shares
            items = self.task.items(batch) if self.task.items is not None else len(indices) / world.context
            counted = torch.as_tensor(loss.count, dtype=torch.float64).to(total.device)
            total += torch.stack([loss.total.detach().to(total), counted, total.new_tensor(float(items))])
        flags = torch.cat([total, total.new_tensor([float(stop.requested)])])
        summed, count, seen, stopping = parallel.all_sum(flags, world).tolist()  # on the group's device (NCCL)
        if count <= 0:
            raise ValueError(f"step {self.step}: the global batch has no item to learn from (Loss.count = 0)")
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(world.size / count)  # DDP averaged over processes: undo that, divide by the count
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last_grad_norm = float(grad_norm)
        return summed / count, seen, stopping > 0

    def evaluate(self) -> dict[str, float]:
        if self.task.evaluate is None or not self.world.main:
            return {}
        generators = checkpoint.rng_state()  # evaluating draws nothing the training sees: every generator restored
        self.model.eval()
        if self.setting is not None:
            use_context_parallel(self.model, None)  # only this process evaluates: on whole sequences
        try:
            with torch.no_grad():
                return {k: float(v) for k, v in self.task.evaluate(self.model).items()}
        finally:
            self.model.train()
            if self.setting is not None:
                use_context_parallel(self.model, self.setting)
            checkpoint.set_rng_state(generators)

    def release(self) -> None:
        """The model as it came (attention on whole sequences again), and the context-parallel group gone."""
        if self.setting is not None:
            use_context_parallel(self.model, None)
            parallel.destroy(self.setting.group)
            self.setting = None


def _context_parallel(task: Task, config: TrainConfig, world: World) -> ContextParallel | None:
    """With ``config.context_parallel``: this process's group, set on the model's self-attention layers; a
    ValueError, before any group is made, for a task that cannot split its sequences or a model that cannot run on
    shards. (A process that closed a group at once could cut off a peer still connecting to it.)"""
    cp = config.context_parallel
    if cp is None:
        return None
    if task.split is None:
        raise ValueError("TrainConfig.context_parallel: this Task cannot split its sequences over processes; give it "
                         "split=(batch, setting) -> this process's part of each sequence (docs/training.md)")
    try:  # the model's own check (attnkit.nn): a model that mixes tokens outside attention
        layers = context_parallel_layers(task.model)
    except ValueError as error:
        raise ValueError(f"TrainConfig.context_parallel: {error}") from None
    if not layers:
        raise ValueError("TrainConfig.context_parallel: the model has no self-attention layer "
                         "(attnkit.nn.MultiHeadAttention) to run on sequence shards")
    setting = ContextParallel(parallel.context_group(world, config.timeout_s), cp.layout, cp.strategy)
    use_context_parallel(task.model, setting)
    return setting


def fit(task: Task, config: TrainConfig, out: Path | str | None = None, *, resume: bool = False,
        progress: bool = True, name: str = "") -> Result:
    """Train ``task.model`` in place for ``config.steps`` steps; see the module docstring.

    Args:
        task: the model, examples and loss.
        config: the loop's settings.
        out: directory for metrics.jsonl, loss.png and checkpoint.pt (None: nothing written, no checkpoints).
        resume: continue from ``out/checkpoint.pt`` (a run already at ``config.steps`` only evaluates). Without
            it, an ``out`` that holds a checkpoint is refused, so a finished or interrupted run is never lost.
        progress: draw a progress bar on stderr (main process).
        name: the progress bar's label.
    """
    world = parallel.from_environment(config.timeout_s, config.context_size)
    out = Path(out) if out is not None else None
    run: _Run | None = None  # made inside the try: DDP's setup is a collective too
    log: _Log | None = None
    stop, loss, interrupted = _Stop(patient=world.size > 1), math.nan, False
    evaluation: dict[str, float] = {}
    try:
        run = _Run(task, config, out, world)
        resumed = _start(run, resume)
        log = _Log(out, world, config, task, run.step, progress, name)
        with stop.installed():
            loss, interrupted, evaluation = _loop(run, log, stop)
        if not interrupted:
            evaluation = run.evaluate()
            if evaluation:
                log.write({"step": run.step, "kind": "eval", **evaluation})
        if out is not None and not interrupted:  # an interrupted loop saved already
            run.save()
    except RuntimeError as error:  # dist.DistBackendError among them
        if world.size > 1 and not isinstance(error, PeerFailure) and _is_peer_error(error):
            when = f"at step {run.step}" if run is not None else "while starting"
            raise PeerFailure(f"process {world.rank}: another process stopped or timed out {when}; "
                              f"stopping too ({str(error).splitlines()[0][:200]})") from error
        raise
    finally:
        if run is not None:
            run.release()
        if log is not None:
            log.close()
    if world.main and out is not None:
        _plot(out)
    return Result(run.step, loss, evaluation, resumed, interrupted)


def refuse_existing(out: Path | str) -> None:
    """The error for an ``out`` that holds a training checkpoint, when the run was not told to resume it."""
    raise ValueError(f"{out} already holds a training checkpoint; pass --resume to continue it, or choose another "
                     "--out")


def check_parallel(state: dict[str, Any], path: Path, processes: int, context: int) -> None:
    """The error for checkpoint ``state`` (read from ``path``) written by a run of other parallel settings than
    this one's ``processes`` and ``context`` (processes per sequence): one line naming the setting, with both
    values. Also the CLI's pre-check, before any process starts."""
    for flag, then, now in (("--context-parallel", TrainConfig.from_dict(state["config"]).context_size, context),
                            ("--nproc", state["world_size"], processes)):
        if then != now:
            raise ValueError(f"--resume: {flag} differs from {path}'s (checkpoint {then}, this run {now}); resume with "
                             f"{flag} {then}, or start in another --out")


def _start(run: _Run, resume: bool) -> int | None:
    out = run.out
    path = out / checkpoint.NAME if out is not None else None
    if path is not None and path.exists():
        if not resume:
            refuse_existing(path.parent)
        state = checkpoint.load(path)
        run.restore(state, path)
        if run.world.main:
            _keep_metrics(path.parent, run.step, finished=run.step >= run.config.steps)
        return run.step
    if out is not None and run.world.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS).unlink(missing_ok=True)  # a fresh run: no rows of an earlier, checkpoint-less one
    return None


def _loop(run: _Run, log: _Log, stop: _Stop) -> tuple[float, bool, dict[str, float]]:
    c, loss, evaluation = run.config, math.nan, {}
    items, since = 0.0, time.perf_counter()  # since the last logged row
    while run.step < c.steps:
        started = time.perf_counter()
        loss, step_items, stopping = run.train_step(stop)
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {run.step}: the training loss is {loss}; lower the learning rate "
                                     "or check the data")
        items += step_items
        log.step(loss, step_items / max(time.perf_counter() - started, 1e-9))
        if run.step % c.log_every == 0 or run.step == c.steps:
            log.write({"step": run.step, "loss": loss, "lr": c.learning_rate(run.step - 1),
                       "grad_norm": run.last_grad_norm, f"{log.unit}_per_s": items / (time.perf_counter() - since)})
            items, since = 0.0, time.perf_counter()
        if c.eval_every is not None and run.step % c.eval_every == 0 and run.step < c.steps:
            evaluation = run.evaluate()
            if evaluation:
                log.write({"step": run.step, "kind": "eval", **evaluation})
        if stopping:
            run.save()
            return loss, True, evaluation
        if c.checkpoint_every is not None and run.step % c.checkpoint_every == 0 and run.step < c.steps:
            run.save()
    return loss, False, evaluation


def _is_peer_error(error: BaseException) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("connection", "closed", "timed out", "timeout", "peer"))


def _plot(out: Path) -> None:
    from .plots import loss_curve  # matplotlib, imported only when a figure is drawn

    loss_curve(read_metrics(out), out / "loss.png")


__all__ = ["fit", "Result", "PeerFailure", "param_groups", "read_metrics", "refuse_existing", "check_parallel",
           "METRICS"]
