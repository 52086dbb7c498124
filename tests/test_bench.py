"""``attnkit bench``: every requested configuration lands in the CSV and JSON, the visible-entry counts and
the ratios check out against independent computations, bad options exit 2 with the reason, and the plot
is a PNG. No timing thresholds: only what the files say about themselves."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import sys

import pytest
import torch

import attnkit
from attnkit.bench import counting, measure
from attnkit.bench.contenders import BIGBIRD, MASKS, MODES, WINDOW, document_ids
from attnkit.cli import main

LENGTHS = (64, 128)
APPROXIMATE = [k.name for k in attnkit.kernels() if not k.capabilities.exact][:1]  # "linear", once registered
KERNELS = ["tiled", "dense", *APPROXIMATE]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small probe that never waits or redoes rounds: these tests check the files, not the machine."""
    init = measure.Probe.__init__
    monkeypatch.setattr(measure, "PROBE_N", 128)
    monkeypatch.setattr(measure.Probe, "__init__", lambda self, target_s, *args: init(self, 1e-4, *args))
    monkeypatch.setattr(measure.Probe, "gate", lambda self: (self.measure()[0], 0.0, True))
    monkeypatch.setattr(measure.Probe, "may_retry", lambda self, retries, round_s: False)


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch):
    threads = torch.get_num_threads()  # --threads 1 below: one thread is not slowed by other processes' load
    _fast_probe(monkeypatch)
    yield
    torch.set_num_threads(threads)


def bench(out, *options: str) -> list[str]:
    """A small run: no FlexAttention compile, no memory pass, one thread."""
    return ["bench", "--peers", "sdpa,dense", "--no-memory", "--threads", "1", "--out", str(out), *options]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One small sweep over every mask and mode: (stdout, stderr, CSV rows, JSON)."""
    out = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        _fast_probe(mp)
        assert main(bench(out, "--lengths", ",".join(map(str, LENGTHS)), "--rounds", "2",
                          "--kernels", ",".join(KERNELS), "--no-plot")) == 0
    torch.set_num_threads(threads)
    with (out / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    return stdout.getvalue(), stderr.getvalue(), rows, json.loads((out / "bench.json").read_text())


def independent_visible(mask: str, n: int) -> int:
    """(query, key) pairs that may attend, from a dense tensor built here."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if mask == "dense":
        dense = torch.ones(n, n, dtype=torch.bool)
    elif mask == "causal":
        dense = j <= i
    elif mask == "window":
        dense = (j <= i) & (j > i - WINDOW)
    elif mask == "document":
        ids = document_ids(n)
        dense = ids[:, None] == ids[None, :]
    else:
        dense = bigbird_visible(n)
    return int(dense.sum())


def bigbird_visible(n: int) -> torch.Tensor:
    """(n, n) bool from BigBird's block rules (masks.sparse.bigbird): query block qb sees key block kb if
    |qb - kb| <= window, either is one of the first num_global blocks, or kb is one of qb's random blocks.
    Only the random draw is the mask's (``random_blocks``); which entries it covers is worked out here."""
    bl, window, g = BIGBIRD["block"], BIGBIRD["window"], BIGBIRD["num_global"]
    qb, kb = torch.arange(n)[:, None] // bl, torch.arange(n)[None, :] // bl
    dense = ((qb - kb).abs() <= window) | (qb < g) | (kb < g)
    for row, picks in enumerate(attnkit.masks.bigbird(**BIGBIRD).random_blocks(n).tolist()):
        for pick in picks:
            if pick >= 0:
                dense |= (qb == row) & (kb == pick)
    return dense


def test_every_requested_configuration_is_in_the_csv_and_json_with_positive_times(sweep):
    stdout, stderr, rows, payload = sweep
    contenders = {f"attnkit:{k}" for k in KERNELS} | {"torch:sdpa"}
    for source in (rows, payload["results"]):
        seen = {(int(r["n"]), r["mask"], r["mode"], r["kernel"]): r for r in source}
        assert set(seen) == {(n, m, mode, k) for n in LENGTHS for m in MASKS for mode in MODES for k in contenders}
    for r in payload["results"]:
        if r["kernel"] not in {f"attnkit:{k}" for k in APPROXIMATE} or r["mask"] in ("dense", "causal"):
            assert r["status"] == "ok", r
            assert r["median_ms"] > 0 and len(r["times_s"]) == 2 and min(r["times_s"]) > 0
        else:  # an approximate kernel on a sparse pattern: skipped, and the table says why
            assert r["status"] == "skipped" and "approximate" in r["note"]
            assert f"N={r['n']} {r['mask']} {r['mode']}" in stdout and "approximate kernel" in stdout
    assert all(float(r["median_ms"]) > 0 for r in rows if r["status"] == "ok")
    assert "torch.get_num_threads() =" in stdout and f"torch {torch.__version__}" in stdout
    assert "matmul probe" in stdout and "machine:" in stdout
    assert f"{len(LENGTHS) * len(MASKS) * len(MODES)}/{len(LENGTHS) * len(MASKS) * len(MODES)}" in stderr


def test_visible_entries_match_a_count_from_the_materialized_mask(sweep):
    _, _, rows, payload = sweep
    for r in rows + payload["results"]:
        assert int(r["visible"]) == independent_visible(r["mask"], int(r["n"])), r


@pytest.mark.parametrize("mask", MASKS)
def test_visible_entries_counted_by_tiles_equal_the_dense_count(monkeypatch, mask):
    from attnkit.bench.contenders import mask_case

    monkeypatch.setattr(counting, "_BLOCK", 64)  # full, partial and empty tiles, the last ones short
    n = 601
    assert counting.visible_entries(mask_case(mask, n).mask, n) == independent_visible(mask, n)


def test_ratios_are_the_peers_time_over_this_time_from_the_same_file(sweep):
    _, _, rows, payload = sweep
    by_key = {(r["n"], r["mask"], r["mode"], r["kernel"]): r for r in payload["results"]}
    checked = 0
    for r in payload["results"]:
        if r["ratio"] is None:
            continue
        peer = by_key[(r["n"], r["mask"], r["mode"], r["peer_kernel"])]
        assert r["peer_kernel"] == "torch:sdpa" and peer["label"] == r["peer"]
        peer_t = dict(zip(peer["rounds"], peer["times_s"]))
        ratios = [peer_t[rd] / t for rd, t in zip(r["rounds"], r["times_s"])]
        assert r["ratio"] == pytest.approx(statistics.median(ratios), rel=1e-12)
        assert (r["ratio_min"], r["ratio_max"]) == pytest.approx((min(ratios), max(ratios)), rel=1e-12)
        checked += 1
    assert checked == sum(r["status"] == "ok" for r in payload["results"])
    for r in rows:  # the CSV says the same, to its 6 significant digits
        ratio = by_key[(int(r["n"]), r["mask"], r["mode"], r["kernel"])]["ratio"]
        assert (r["ratio"] == "") == (ratio is None)
        if ratio is not None:
            assert float(r["ratio"]) == pytest.approx(ratio, rel=1e-5)


def test_one_round_ratio_equals_peer_median_over_median_in_the_csv(tmp_path, capsys):
    assert main(bench(tmp_path, "--lengths", "64", "--rounds", "1", "--kernels", "tiled,dense", "--masks", "window",
                      "--modes", "fwd", "--no-plot")) == 0
    with (tmp_path / "bench.csv").open() as f:
        rows = {r["kernel"]: r for r in csv.DictReader(f)}
    peer = rows["torch:sdpa"]
    for kernel in ("attnkit:tiled", "attnkit:dense", "torch:sdpa"):
        r = rows[kernel]
        assert float(r["ratio"]) == pytest.approx(float(peer["median_ms"]) / float(r["median_ms"]), rel=1e-4)
    assert "vs torch sdpa" in capsys.readouterr().out


def test_the_plot_is_a_png(tmp_path, capsys):
    assert main(bench(tmp_path, "--quick", "--lengths", "64,128", "--rounds", "1", "--kernels", "tiled",
                      "--masks", "causal,document", "--modes", "fwd")) == 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == PNG_MAGIC
    assert "bench.png" in capsys.readouterr().out


def test_without_matplotlib_the_plot_is_skipped_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(bench(tmp_path, "--quick", "--lengths", "64", "--rounds", "1", "--kernels", "tiled",
                      "--masks", "causal", "--modes", "fwd")) == 0
    assert "install attnkit[viz] for the plot" in capsys.readouterr().err
    assert (tmp_path / "bench.csv").exists() and (tmp_path / "bench.json").exists()
    assert not (tmp_path / "bench.png").exists()


def exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("option, value, reason", [
    ("--kernels", "tiled,nope", "unknown kernel 'nope'"),
    ("--masks", "causal,diagonal", "unknown mask 'diagonal'"),
    ("--modes", "bwd", "unknown mode 'bwd'"),
    ("--peers", "xformers", "unknown peer 'xformers'"),
    ("--lengths", "64,0", "must be positive, got 0"),
    ("--lengths", "64,-8", "must be positive, got -8"),
    ("--lengths", "big", "'big' is not an int"),
    ("--rounds", "0", "must be positive, got 0"),
])
def test_bad_options_exit_2_with_a_one_line_reason_before_any_timing(tmp_path, capsys, option, value, reason):
    assert exit_code(["bench", option, value, "--out", str(tmp_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's usage lines come first
    assert last.startswith("attnkit bench: ") and reason in last
    assert not (tmp_path / "bench.csv").exists()


def test_a_spent_time_budget_skips_configurations_and_says_so(tmp_path, capsys, monkeypatch):
    from attnkit.bench import sweep

    monkeypatch.setattr(sweep, "QUICK_BUDGET_S", 0.0)
    assert main(bench(tmp_path, "--quick", "--lengths", "64", "--kernels", "tiled", "--masks", "causal,window",
                      "--no-plot")) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["mask"], r["mode"]) for r in payload["results"]} == {(m, mode) for m in ("causal", "window")
                                                                    for mode in MODES}
    assert all(r["status"] == "skipped" and "time budget" in r["note"] for r in payload["results"])
    table = capsys.readouterr().out
    assert table.count("(all)") == 4 and "time budget is spent" in table
