"""attnkit.train with context parallelism: a GPT trained on sequences split over 2 (and 2 x 2) gloo processes
gives the per-step losses, gradient norms and final weights of one process, in float64; an interrupted run
resumes bitwise; the settings and the command line refuse what cannot run, in one line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnkit.cli import main
from attnkit.train import ContextParallelConfig, Task, TrainConfig, fit, read_metrics
from attnkit.train.checkpoint import load

PROCESSES = pytest.mark.xdist_group("processes")  # with the other process-group tests, one group at a time
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ATTNKIT = [sys.executable, "-m", "attnkit"]

# A float64 GPT (RoPE, grouped-query heads, a sliding window in one layer, no biases: a key bias's gradient is
# zero up to rounding, which AdamW would blow up to +-lr) on random tokens, trained 6 steps with accumulation and
# clipping. The task splits each sequence with the setting the loop gives it.
WORKER = textwrap.dedent("""
    import os, signal, sys
    import torch, torch.nn.functional as F
    from attnkit.models import GPT, GPTConfig
    from attnkit.train import ContextParallelConfig, Loss, Task, TrainConfig, fit

    torch.manual_seed(0)
    tokens = torch.randint(0, 23, (32, 17), generator=torch.Generator().manual_seed(1))
    model = GPT(GPTConfig(vocab_size=23, max_seq_len=16, dim=16, num_layers=2, positions="rope",
                          attention=dict(num_heads=4, num_kv_heads=2, bias=False, window=5, window_layers=(1,)),
                          ffn=dict(hidden=32, activation="swiglu", bias=False), norm=dict(kind="rms"),
                          tie_embeddings=False)).double()
    stop_at = int(os.environ.get("STOP_AT", "0"))  # rank 0 gets a SIGINT during this loss call (0: never)

    def split(batch, setting):  # this process's part of every sequence, and where its tokens sit
        x, y, _ = batch
        part = setting.shard(x)
        return part, setting.shard(y), setting.positions(part)

    def loss(m, batch):
        loss.calls += 1
        if loss.calls == stop_at and int(os.environ.get("RANK", "0")) == 0:
            os.kill(os.getpid(), signal.SIGINT)
        x, y, positions = batch
        logits = m(x, position_ids=positions).logits  # (B, N or N / C, 23)
        return Loss(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"), y.numel())
    loss.calls = 0

    size = int(os.environ.get("CONTEXT_PARALLEL", "1"))
    setting = ContextParallelConfig(size, layout=os.environ.get("LAYOUT", "zigzag"),
                                    strategy=os.environ.get("STRATEGY", "ring")) if size > 1 else None
    task = Task(model, size=32, batch=lambda i: (tokens[i, :-1], tokens[i, 1:], None), loss=loss, split=split)
    config = TrainConfig(steps=6, batch_size=8, accumulation=2, lr=1e-2, grad_clip=0.5, log_every=1,
                         timeout_s=60, context_parallel=setting)
    result = fit(task, config, sys.argv[1], resume=bool(os.environ.get("RESUME")), progress=False)
    print("INTERRUPTED" if result.interrupted else "DONE", result.step)
""")


def _run(tmp_path: Path, out: Path, nproc: int, context: int, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, str(script), str(out)]
    if nproc > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        "--max-restarts=0"]
    done = subprocess.run(command, env={**ENV, "CONTEXT_PARALLEL": str(context), **env}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _outcome(out: Path) -> tuple[list[float], list[float], dict]:
    rows = [r for r in read_metrics(out) if "kind" not in r]
    return [r["loss"] for r in rows], [r["grad_norm"] for r in rows], load(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    _run(tmp, tmp / "out", 1, 1)
    return _outcome(tmp / "out")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """2 processes sharing each sequence (zigzag, ring): the run's folder."""
    tmp = tmp_path_factory.mktemp("two")
    _run(tmp, tmp / "out", 2, 2)
    return tmp / "out"


def _assert_equal_within(got, want, tolerance: float) -> None:
    """Losses, gradient norms (the gradients' scale, which AdamW would hide) and every weight, relatively."""
    (losses, norms, state), (want_losses, want_norms, want_state) = got, want
    assert len(losses) == len(want_losses) == 6 and want_losses[-1] < want_losses[0]
    assert losses == pytest.approx(want_losses, rel=tolerance)
    assert norms == pytest.approx(want_norms, rel=tolerance)
    assert want_norms[0] > 0.5  # clipping acts: a wrong scale would change the steps too
    for name, tensor in want_state["model"].items():
        error = (state["model"][name] - tensor).abs().max().item() / max(tensor.abs().max().item(), 1e-30)
        assert error < tolerance, (name, error)


@PROCESSES
def test_two_processes_sharing_each_sequence_train_as_one_process(one_process, two_processes):
    got = _outcome(two_processes)
    _assert_equal_within(got, one_process, 1e-10)  # float64: only the order of the sums differs (seen: 2e-14)
    assert got[2]["world_size"] == 2 and got[2]["config"]["context_parallel"] == \
        {"size": 2, "layout": "zigzag", "strategy": "ring"}


@PROCESSES
def test_contiguous_layout_and_ulysses_train_as_one_process(tmp_path, one_process):
    _run(tmp_path, tmp_path / "out", 2, 2, LAYOUT="contiguous", STRATEGY="ulysses")
    _assert_equal_within(_outcome(tmp_path / "out"), one_process, 1e-10)


@PROCESSES
def test_two_replicas_of_two_processes_train_as_one_process(tmp_path, one_process):
    """dp = 2 x cp = 2: ranks 0, 1 share the first half of each batch's sequences, ranks 2, 3 the second."""
    _run(tmp_path, tmp_path / "out", 4, 2)
    _assert_equal_within(_outcome(tmp_path / "out"), one_process, 1e-10)


@PROCESSES
def test_an_interrupted_context_parallel_run_resumes_bitwise(tmp_path, two_processes):
    stopped = _run(tmp_path, tmp_path / "part", 2, 2, STOP_AT="5")  # during step 3's first micro-batch
    assert "INTERRUPTED 3" in stopped.stdout and load(tmp_path / "part" / "checkpoint.pt")["step"] == 3
    _run(tmp_path, tmp_path / "part", 2, 2, RESUME="1")
    (losses, norms, state), (want_losses, want_norms, want_state) = (_outcome(tmp_path / "part"),
                                                                      _outcome(two_processes))
    assert (losses, norms) == (want_losses, want_norms)
    for name, tensor in want_state["model"].items():
        assert torch.equal(state["model"][name], tensor), name


@PROCESSES
def test_resuming_without_the_setting_is_refused_naming_it(two_processes):
    """The checkpoint's config holds the setting: a run with other processes per sequence is another run."""
    from attnkit.models import GPT, GPTConfig

    saved = load(two_processes / "checkpoint.pt")["config"]
    task = Task(GPT(GPTConfig(vocab_size=11, max_seq_len=8, dim=8, num_layers=1, attention=dict(num_heads=2))),
                size=32, batch=lambda i: i, loss=lambda m, b: None)
    with pytest.raises(ValueError, match=r"--resume: --context-parallel differs from .*checkpoint.pt's "
                                         r"\(checkpoint 2, this run 1\)"):
        fit(task, TrainConfig.from_dict({**saved, "context_parallel": None}), two_processes, resume=True,
            progress=False)


# Two fits and then one whose DDP set-up fails as when a peer has crashed, in each of 2 gloo processes; then a fit
# of a model that cannot run on shards. Each process reports the process groups torch.distributed holds (private:
# no public count) and which attention layers are still set on shards.
SETUP_WORKER = textwrap.dedent("""
    import json, os
    from unittest import mock
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.distributed import distributed_c10d
    from attnkit.models import GPT, GPTConfig, HybridConfig, HybridLM
    from attnkit.train import ContextParallelConfig, Loss, Task, TrainConfig, fit

    tokens = torch.randint(0, 11, (8, 9), generator=torch.Generator().manual_seed(0))

    def split(batch, setting):
        x, y, _ = batch
        part = setting.shard(x)
        return part, setting.shard(y), setting.positions(part)

    def loss(m, batch):
        x, y, positions = batch
        logits = m(x, position_ids=positions).logits
        return Loss(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"), y.numel())

    def task(model):
        return Task(model, size=8, batch=lambda i: (tokens[i, :-1], tokens[i, 1:], None), loss=loss, split=split)

    def outcome(model, **options):
        try:
            fit(task(model), config, progress=False)
            return {"error": None, **options}
        except Exception as error:
            return {"error": type(error).__name__, "message": str(error), "groups": groups(), **options,
                    "sharded": [n for n, m in model.named_modules() if getattr(m, "context_parallel", None)]}

    def groups():
        return len(distributed_c10d._world.pg_map)

    config = TrainConfig(steps=1, batch_size=4, timeout_s=60, context_parallel=ContextParallelConfig(2))
    gpt = GPT(GPTConfig(vocab_size=11, max_seq_len=8, dim=8, num_layers=2, attention=dict(num_heads=2)))
    dist.init_process_group("gloo")
    report = {"before": groups()}
    fit(task(gpt), config, progress=False)
    fit(task(gpt), config, progress=False)
    report["after_two"] = groups()
    def crash(module):  # DDP's set-up is a collective (a barrier here); then it finds a peer gone
        dist.barrier()
        raise RuntimeError("Connection closed by peer [simulated: a crashed process]")

    with mock.patch("attnkit.train.loop.DistributedDataParallel", side_effect=crash):
        report["ddp"] = outcome(gpt)
    hybrid = HybridLM(HybridConfig(vocab_size=11, dim=8, pattern="MA", num_heads=2, state_dim=2))
    report["hybrid"] = outcome(hybrid)
    # a file per process: two processes printing long lines to one pipe can interleave them (it happened in CI)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"report{dist.get_rank()}.json"), "w") as f:
        json.dump(report, f)
""")


@PROCESSES
def test_fit_hands_the_model_and_its_group_back_when_the_set_up_fails_and_after_each_run(tmp_path):
    """DDP's set-up raising (a crashed peer) leaves no layer on shards and turns into PeerFailure, as the loop's
    other peer errors do; no fit leaves a process group behind (a sweep of fits in one process)."""
    script = tmp_path / "setup.py"
    script.write_text(SETUP_WORKER)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "--max-restarts=0", str(script)], env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report{rank}.json").read_text()) for rank in range(2)]
    for report in reports:
        assert report["after_two"] == report["before"], report  # each fit destroyed the group it made
        ddp, hybrid = report["ddp"], report["hybrid"]
        assert ddp["error"] == "PeerFailure" and "another process stopped or timed out while starting" in \
            ddp["message"], ddp
        assert ddp["sharded"] == [] and ddp["groups"] == report["before"], ddp
        assert hybrid["error"] == "ValueError" and hybrid["message"].startswith(
            "TrainConfig.context_parallel: model has a SelectiveSSM at layers.0.mixer, which mixes tokens"), hybrid
        assert hybrid["sharded"] == [] and hybrid["groups"] == report["before"], hybrid


# --- settings and refusals, in one process ------------------------------------------------------------------

def test_the_setting_round_trips_through_the_checkpoints_dict_and_none_is_whole_sequences():
    config = TrainConfig(context_parallel=ContextParallelConfig(4, layout="contiguous", strategy="ulysses"))
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"steps": 3}).context_parallel is None  # a checkpoint from before the setting
    with pytest.raises(ValueError, match=r"ContextParallelConfig.size must be an int >= 2, got 1 \(whole sequences: "
                                         r"TrainConfig\(context_parallel=None\)\)"):
        ContextParallelConfig(1)  # one way to write "off": None
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'size'"):
        ContextParallelConfig()  # no arbitrary default size
    with pytest.raises(ValueError, match="ContextParallelConfig.layout: layout must be one of"):
        ContextParallelConfig(2, layout="striped")
    with pytest.raises(ValueError, match="ContextParallelConfig.strategy: strategy must be one of"):
        ContextParallelConfig(2, strategy="tree")
    with pytest.raises(TypeError, match="TrainConfig.context_parallel must be a ContextParallelConfig"):
        TrainConfig(context_parallel=2)


def test_recipes_pass_none_for_whole_sequences(tmp_path):
    from attnkit.train.recipes import Options
    from attnkit.train.recipes.common import train_config

    assert train_config(Options(tmp_path), steps=3).context_parallel is None
    assert train_config(Options(tmp_path, context_parallel=3), steps=3).context_parallel == ContextParallelConfig(3)


def test_use_context_parallel_refuses_a_model_that_mixes_tokens_outside_attention_and_leaves_it_as_it_was():
    """attnkit.nn's own check: a HybridLM (or an RNN, a Conv1d) on shards would be silently wrong."""
    from torch import nn

    from attnkit.distributed import ContextParallel
    from attnkit.models import HybridConfig, HybridLM
    from attnkit.nn import MultiHeadAttention, use_context_parallel

    hybrid = HybridLM(HybridConfig(vocab_size=11, dim=8, pattern="MA", num_heads=2, state_dim=2))
    models = {"SelectiveSSM at layers.0.mixer": hybrid,
              "GRU at 1": nn.Sequential(MultiHeadAttention(8, 2), nn.GRU(8, 8)),
              "Conv1d at 0": nn.Sequential(nn.Conv1d(8, 8, 3), MultiHeadAttention(8, 2))}
    for where, model in models.items():
        with pytest.raises(ValueError, match=f"model has a {where}, which mixes tokens along the sequence outside "
                                             "attention"):
            use_context_parallel(model, ContextParallel())
        assert all(m.context_parallel is None for m in model.modules() if isinstance(m, MultiHeadAttention))
        assert use_context_parallel(model, None) == 1  # whole sequences: always allowed


def test_fit_refuses_context_parallelism_without_the_processes_or_a_split():
    from attnkit.models import GPT, GPTConfig, HybridConfig, HybridLM
    from attnkit.train.loop import _context_parallel
    from attnkit.train.parallel import World

    gpt = GPT(GPTConfig(vocab_size=11, max_seq_len=8, dim=8, num_layers=1, attention=dict(num_heads=2)))
    task = Task(gpt, size=4, batch=lambda i: i, loss=lambda m, b: None)
    config = TrainConfig(batch_size=2, context_parallel=ContextParallelConfig(2))
    with pytest.raises(ValueError, match="TrainConfig.context_parallel.size=2 needs a multiple of 2 processes, this "
                                         "run has 1"):
        fit(task, config, progress=False)
    world = World(rank=0, size=2, context=2)  # the checks come before any process group is made
    with pytest.raises(ValueError, match="this Task cannot split its sequences"):
        _context_parallel(task, config, world)
    hybrid = HybridLM(HybridConfig(vocab_size=11, dim=8, pattern="MA", num_heads=2, state_dim=2))
    task = Task(hybrid, size=4, batch=lambda i: i, loss=lambda m, b: None, split=lambda b, s: b)
    with pytest.raises(ValueError, match="TrainConfig.context_parallel: model has a SelectiveSSM at layers.0.mixer"):
        _context_parallel(task, config, world)
    assert all(getattr(m, "context_parallel", None) is None for m in hybrid.modules())
    task = Task(torch.nn.Linear(2, 2), size=4, batch=lambda i: i, loss=lambda m, b: None, split=lambda b, s: b)
    with pytest.raises(ValueError, match="the model has no self-attention layer"):
        _context_parallel(task, config, world)


# --- the command line ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["char-lm", "--context-parallel", "2"], "--context-parallel 2 splits each sequence over 2 processes: add "
                                             "--nproc 2"),
    (["char-lm", "--nproc", "3", "--context-parallel", "2"], "--context-parallel 2 must divide the number of "
                                                             "processes (3)"),
    (["char-lm", "--nproc", "3", "--context-parallel", "2"], "split the batch; use --nproc 2 or 4"),
    (["char-lm", "--nproc", "2", "--context-parallel", "4"], "split the batch; use --nproc 4"),
    (["char-lm", "--nproc", "3", "--context-parallel", "3"], "char-lm --quick with --context-parallel 3: "
                                                             "layout='zigzag' over 3 processes cuts the sequence into "
                                                             "6 equal chunks, so the sequence must have a length "
                                                             "divisible by 6; got 32"),
    (["vit-digits", "--nproc", "2", "--context-parallel", "2"], "recipe 'vit-digits' cannot run with "
                                                                "--context-parallel (it trains no GPT over token "
                                                                "sequences to split); recipes that can: char-lm"),
])
def test_what_cannot_run_context_parallel_is_refused_in_one_line(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.parametrize("saved, argv, message", [
    ((2, 2), [], "--resume: --context-parallel differs from {path}'s (checkpoint 2, this run 1); resume with "
                 "--context-parallel 2, or start in another --out"),
    ((4, 2), ["--nproc", "2", "--context-parallel", "2"], "--resume: --nproc differs from {path}'s (checkpoint 4, "
                                                          "this run 2); resume with --nproc 4"),
    ((2, None), ["--nproc", "2", "--context-parallel", "2"], "--resume: --context-parallel differs from {path}'s "
                                                             "(checkpoint 1, this run 2)"),
])
def test_resuming_with_other_parallel_settings_is_refused_in_one_line_before_any_process_starts(
        saved, argv, message, tmp_path, capsys):
    """The checkpoint's processes and --context-parallel, read by the command before it launches anything."""
    from attnkit.train.checkpoint import save

    processes, size = saved
    path = tmp_path / "softmax" / "checkpoint.pt"  # what a char-lm run leaves: only its config and world size count
    setting = ContextParallelConfig(size) if size else None
    save(path, {"step": 3, "config": TrainConfig(context_parallel=setting).to_dict(), "world_size": processes})
    before = sorted(tmp_path.rglob("*"))
    assert main(["train", "char-lm", "--quick", "--out", str(tmp_path), "--no-progress", "--resume", *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before  # nothing ran


@PROCESSES
def test_char_lm_through_the_command_line_equals_one_process(tmp_path):
    runs = {}
    for nproc, context in ((1, 1), (2, 2)):
        out = tmp_path / f"cp{context}"
        done = subprocess.run([*ATTNKIT, "train", "char-lm", "--quick", "--out", str(out), "--no-progress",
                               "--nproc", str(nproc), "--context-parallel", str(context)], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[context] = (done.stdout, json.loads((out / "results.json").read_text()))
    stdout, results = runs[2]
    assert set(results["variants"]) == {"softmax", "window-16"} and results["context_parallel"] == 2
    assert "ssm-hybrid: skipped under --context-parallel: its selective scan" in stdout
    assert "linear: skipped under --context-parallel: its kernel keeps no log-sum-exp" in stdout
    for name in ("softmax", "window-16"):  # float32, through ring attention: rounding apart, the same run
        want = [r for r in read_metrics(tmp_path / "cp1" / name) if "kind" not in r]
        got = [r for r in read_metrics(tmp_path / "cp2" / name) if "kind" not in r]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
        assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-5)
        assert results["variants"][name]["bits_per_byte"] == pytest.approx(
            runs[1][1]["variants"][name]["bits_per_byte"], rel=1e-5)
    assert load(tmp_path / "cp2" / "softmax" / "checkpoint.pt")["config"]["context_parallel"]["size"] == 2


def test_context_parallel_1_is_the_plain_run(tmp_path, capsys):
    """Any recipe takes --context-parallel 1, without --nproc: whole sequences, no setting in the checkpoint."""
    assert main(["train", "vit-digits", "--quick", "--steps", "2", "--out", str(tmp_path), "--no-progress",
                 "--context-parallel", "1"]) == 0
    assert load(tmp_path / "vit" / "checkpoint.pt")["config"]["context_parallel"] is None
