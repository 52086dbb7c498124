"""The command line on hostile input (issue 18): a `$` in what figures draw."""

from __future__ import annotations

import pytest

import attnkit


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
