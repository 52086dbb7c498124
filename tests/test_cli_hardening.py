"""The command line on hostile input (issue 18): Ctrl-C reaching the memory pass of `attnkit bench`,
a `$` in what figures draw."""

from __future__ import annotations

import os
import signal

import pytest

import attnkit
from attnkit.bench import measure


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


def _interrupt_self(spec: dict) -> dict:
    """A measurement that gets a terminal's Ctrl-C, as every process of the group does."""
    os.kill(os.getpid(), signal.SIGINT)
    return {"ok": True}


def test_a_memory_child_leaves_ctrl_c_to_the_parent():
    """Ctrl-C in a terminal reaches the memory pass's child too: it must not die with a traceback of its own."""
    assert measure.MemoryServer([]).run(_interrupt_self, {}, 60) == {"ok": True}
