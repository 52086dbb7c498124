"""The command line on hostile input (issue 18): a corrupt or misplaced checkpoint, an --out that cannot be a
directory, bytes that are not UTF-8, a `$` in what figures draw, Ctrl-C, a closed pipe, a demo longer than
the reference kernel's budget. Each gets one line on stderr naming the argument or file and exit code 2
(1 for work that failed, 130 for Ctrl-C), never a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import default_sigint

import attnkit
from attnkit import hub
from attnkit.bench import measure
from attnkit.cli import main

def one_line(err: str) -> str:
    """The single line of ``err``; fails when there are more, or a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def model_argv(command: str, model, tmp_path) -> list[str]:
    """``command`` on ``--model model``, writing nothing."""
    if command == "explain":
        return ["explain", "--model", str(model), "--no-html", "--formats", "", "--out", str(tmp_path / "out"), "hi"]
    return [command, "--model", str(model), "hi"]


COMMANDS = ["embed", "generate", "explain"]


def corrupt(gpt_dir, tmp_path, how: str):
    """A copy of the checkpoint with one file spoiled; returns (directory, the spoiled file)."""
    directory = tmp_path / "ckpt"
    shutil.copytree(gpt_dir, directory)
    if how == "safetensors":
        bad = directory / "model.safetensors"
        bad.write_bytes(os.urandom(1000))
    elif how == "truncated":
        bad = directory / "model.safetensors"
        bad.write_bytes(bad.read_bytes()[:5000])
    elif how == "bin":
        (directory / "model.safetensors").unlink()
        bad = directory / "pytorch_model.bin"
        bad.write_bytes(b"PK\x03\x04 not a zip archive")
    elif how == "config":
        bad = directory / "config.json"
        bad.write_text("{not json")
    else:  # config.json that is not UTF-8
        bad = directory / "config.json"
        bad.write_bytes(b"\xff\xfe{}")
    return directory, bad


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["safetensors", "truncated", "bin", "config", "latin1"])
def test_a_corrupt_checkpoint_is_one_line_naming_the_file(gpt_dir, tmp_path, capsys, command, how):
    directory, bad = corrupt(gpt_dir, tmp_path, how)
    assert main(model_argv(command, directory, tmp_path)) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"attnkit {command}: --model") and str(bad) in line
    assert captured.out == ""


@pytest.mark.parametrize("raised", ["SafetensorError", "JSONDecodeError", "RuntimeError", "PermissionError"])
def test_whatever_a_reader_raises_is_one_line(gpt_dir, tmp_path, capsys, monkeypatch, raised):
    """Errors a reader might let through the hub (the hub itself names the file: the corrupt-checkpoint test
    above) are one line with the error's name and first line, exit 2; an OSError names its file itself."""
    from safetensors import SafetensorError

    directory = tmp_path / "ckpt"
    shutil.copytree(gpt_dir, directory)
    error = {"SafetensorError": SafetensorError("Error while deserializing header: header too large"),
             "JSONDecodeError": json.JSONDecodeError("Expecting value", "{", 1),
             "RuntimeError": RuntimeError("PytorchStreamReader failed reading zip archive\nmore detail"),
             "PermissionError": PermissionError(errno.EACCES, "Permission denied", str(directory / "vocab.json")),
             }[raised]

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "load", fail)
    assert main(["generate", "--model", str(directory), "hi"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"attnkit generate: --model {directory}") and raised in line
    assert str(error).splitlines()[0] in line
    if raised == "PermissionError":
        assert str(directory / "vocab.json") in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_that_is_a_file_is_one_line(gpt_dir, tmp_path, capsys, command):
    path = gpt_dir / "config.json"
    assert main(model_argv(command, path, tmp_path)) == 2
    line = one_line(capsys.readouterr().err)
    assert str(path) in line and "is a file" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_model_directory_is_one_line(tmp_path, capsys, command):
    assert main(model_argv(command, tmp_path / "none", tmp_path)) == 2
    assert "no such directory" in one_line(capsys.readouterr().err)


def test_explain_refuses_a_checkpoint_without_tokenizer(gpt_dir, tmp_path, capsys):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt_dir / name, directory / name)
    assert main(model_argv("explain", directory, tmp_path)) == 2
    assert "no tokenizer files" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# --out


def bad_outs(tmp_path) -> list:
    file = tmp_path / "a-file"
    file.write_text("keep me")
    return [file, file / "under"]


@pytest.mark.parametrize("which", [0, 1], ids=["a file", "under a file"])
def test_explain_refuses_an_out_that_is_no_directory_before_the_model_runs(tmp_path, capsys, monkeypatch, which):
    out = bad_outs(tmp_path)[which]
    monkeypatch.setattr(hub, "load", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    assert main(["explain", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(f"attnkit explain: --out {out}: ") and captured.out == ""
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("which", [0, 1], ids=["a file", "under a file"])
def test_bench_refuses_an_out_that_is_no_directory_before_any_timing(tmp_path, capsys, monkeypatch, which):
    out = bad_outs(tmp_path)[which]
    monkeypatch.setattr(measure.Probe, "measure", lambda self: pytest.fail("the probe ran before --out was checked"))
    assert main(["bench", "--quick", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(f"attnkit bench: --out {out}: ") and captured.out == ""


def test_bench_prints_the_table_before_writing_and_a_failed_write_is_one_line(tmp_path, capsys, monkeypatch):
    from test_bench import _fast_probe

    from attnkit.bench import SweepResult

    _fast_probe(monkeypatch)
    threads = torch.get_num_threads()

    def full_disk(self, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "bench.json"))

    monkeypatch.setattr(SweepResult, "write", full_disk)
    try:
        assert main(["bench", "--peers", "sdpa", "--no-memory", "--threads", "1", "--lengths", "64", "--rounds", "1",
                     "--kernels", "tiled", "--masks", "causal", "--modes", "fwd", "--no-plot",
                     "--out", str(tmp_path)]) == 1
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert "vs torch sdpa" in captured.out  # the table came first
    last = captured.err.strip().splitlines()[-1]  # after the progress lines
    assert last == f"attnkit bench: [Errno 28] No space left on device: '{tmp_path / 'bench.json'}'"
    assert "Traceback" not in captured.err


# --------------------------------------------------------------------------------------------------
# Ctrl-C and closed pipes: signals, so a process of its own


def attnkit_process(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "attnkit.cli", *argv], env=env, text=True, preexec_fn=default_sigint,
                            **kwargs)


def test_ctrl_c_during_bench_is_one_line_and_exit_130(tmp_path):
    p = attnkit_process("bench", "--quick", "--no-plot", "--kernels", "dense,tiled", "--lengths", "1024,2048",
                        "--masks", "dense", "--modes", "fwdbwd", "--peers", "sdpa", "--out", str(tmp_path),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        header = p.stdout.readline()  # printed (and flushed) just before the sweep starts
        assert header.startswith("attnkit bench"), header
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "attnkit bench: interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "bench.csv").exists()


def _interrupt_self(spec: dict) -> dict:
    """A measurement that gets a terminal's Ctrl-C, as every process of the group does."""
    os.kill(os.getpid(), signal.SIGINT)
    return {"ok": True}


def test_a_memory_child_leaves_ctrl_c_to_the_parent():
    """Ctrl-C in a terminal reaches the memory pass's child too: it must not die with a traceback of its own."""
    assert measure.MemoryServer([]).run(_interrupt_self, {}, 60) == {"ok": True}


def test_a_closed_stdout_pipe_ends_quietly():
    """`attnkit kernels | head -1`: the reader left; no traceback, the code of SIGPIPE."""
    p = attnkit_process("kernels", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the child writes anything
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == ""


# --------------------------------------------------------------------------------------------------
# Text that is not UTF-8


@pytest.mark.parametrize("argv, name", [
    (["explain", "\udcff\udcfe"], "argument text"),
    (["explain", "--focus", "it\udcff"], "argument --focus"),
    (["embed", "fine", "\udcff"], "argument sentences"),
    (["generate", "--model", "/no/such/model", "\udcfe"], "argument prompt"),
    (["bench", "--kernels", "tiled,\udcff"], "argument --kernels"),
])
def test_arguments_that_are_not_utf8_are_one_line_naming_them(argv, name, capsys):
    """Undecodable bytes in sys.argv arrive as lone surrogates (surrogateescape)."""
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{name} is not valid UTF-8: b'" in line and ("\\xff" in line or "\\xfe" in line)


def test_embed_stdin_that_is_not_utf8_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"fine\n\xff\xfe\n"), encoding="utf-8"))
    assert main(["embed"]) == 2
    assert "standard input is not valid UTF-8" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# generate: checked before the prompt is echoed


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "-1"], "max_new_tokens must be a non-negative int"),
    (["--temperature", "1", "--top-p", "2"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "500"], "exceeds"),
])
def test_generate_refuses_bad_options_before_echoing_the_prompt(gpt_dir, capsys, argv, message):
    assert main(["generate", "--model", str(gpt_dir), *argv, "The cat"]) == 2
    captured = capsys.readouterr()
    assert message in one_line(captured.err) and captured.out == ""


def test_generate_refuses_an_empty_prompt(gpt_dir, capsys):
    assert main(["generate", "--model", str(gpt_dir), ""]) == 2
    assert "argument prompt is empty" in one_line(capsys.readouterr().err)


def test_generate_with_no_new_tokens_echoes_the_prompt(gpt_dir, capsys):
    assert main(["generate", "--model", str(gpt_dir), "--max-new-tokens", "0", "The cat"]) == 0
    assert capsys.readouterr().out == "The cat\n"


# --------------------------------------------------------------------------------------------------
# Figures draw user text as it is


@pytest.mark.parametrize("usetex", [False, True], ids=["mathtext", "usetex"])
def test_figures_draw_dollars_and_carets_as_text(tmp_path, usetex):
    matplotlib = pytest.importorskip("matplotlib")
    from attnkit.inspect.figures import write_figures

    e = attnkit.inspect.explain("it costs $5 and $x_^y$ too")
    e.model_name = "/models/m$x_^y$ 100%"  # a path as the CLI passes it
    assert any("$" in t for t in e.tokens)
    with matplotlib.rc_context({"text.usetex": usetex}):  # a user's rc asking for LaTeX is overruled
        written = write_figures(e, tmp_path, ["svg", "png"])
    assert len(written) == 6
    svg = (tmp_path / "layers_mean.svg").read_text()
    assert "m$x_^y$ 100%: head-averaged attention per layer" in svg


def test_explain_with_a_dollar_in_the_model_path(gpt_dir, tmp_path, capsys):
    directory = tmp_path / "m$x_^y$"
    shutil.copytree(gpt_dir, directory)
    out = tmp_path / "out"
    assert main(["explain", "--model", str(directory), "--formats", "svg", "--no-html", "--out", str(out),
                 "The cat sat on the $mat_^$."]) == 0
    assert f"{directory}: head-averaged attention per layer" in (out / "layers_mean.svg").read_text()
    assert f"model: {directory}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# demo beyond the dense reference's budget


def test_demo_compares_the_rows_that_fit_when_the_whole_reference_does_not(capsys, monkeypatch):
    """As `attnkit demo --n 20000` with the real budget: the dense kernel refuses the whole request."""
    from attnkit.functional.kernels import dense

    monkeypatch.setattr(dense, "MAX_DENSE_BYTES", 8 * 300 * 300 * 8 // 20)  # a twentieth of the whole
    assert main(["demo", "--n", "300", "--window", "16"]) == 0
    out = capsys.readouterr().out
    shown = re.search(r"reference: the last (\d+) of 300 query rows", out)
    assert shown and 1 <= int(shown[1]) <= 15
    rows = {line.split()[0]: line for line in out.splitlines() if "(first call)" in line or "refused" in line}
    assert "refused" in rows["dense"]
    for kernel in ("sdpa", "tiled", "auto"):
        assert float(rows[kernel].split()[-1]) < 1e-5, rows[kernel]
