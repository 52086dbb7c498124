"""The command line: ``attnkit embed`` and ``attnkit generate`` print what the library computes."""

from __future__ import annotations

import io
import json

import pytest
import torch

import attnkit
from attnkit import hub
from attnkit.cli import main

SEED = "The animal didn't cross the street because it was too tired"
SENTENCES = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."]


def test_embed_json_is_the_library_result_in_input_order(capsys):
    assert main(["embed", "--json", *SENTENCES]) == 0
    vectors = torch.tensor(json.loads(capsys.readouterr().out))
    torch.testing.assert_close(vectors, attnkit.embed(SENTENCES), atol=1e-6, rtol=0)


def test_embed_prints_a_cosine_matrix_and_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(SENTENCES) + "\n\n"))
    assert main(["embed"]) == 0
    out = capsys.readouterr().out
    cosine = attnkit.embed(SENTENCES)
    assert f"{float(cosine[0] @ cosine[1]):.3f}" in out and "[2] Stock markets" in out


def test_embed_without_sentences_fails_clearly(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["embed"]) == 2
    assert "no sentences given" in capsys.readouterr().err


def test_generate_streams_the_greedy_continuation(gpt_dir, capsys):
    model, tokenizer = hub.load(gpt_dir)
    ids, _ = tokenizer.encode(["The cat"])
    expected = model.generate(ids, 12, eos_token_id=tokenizer.eos_id)[0, ids.shape[1]:].tolist()
    if tokenizer.eos_id in expected:
        expected = expected[:expected.index(tokenizer.eos_id)]
    assert main(["generate", "--model", str(gpt_dir), "--max-new-tokens", "12", "The cat"]) == 0
    assert capsys.readouterr().out == "The cat" + tokenizer.decode(expected) + "\n"


def test_generate_refuses_an_encoder_and_a_missing_directory(capsys, tmp_path):
    assert main(["generate", "--model", str(hub.resolve("all-MiniLM-L6-v2")), "hi"]) == 2
    assert "must be a decoder checkpoint" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "none"), "hi"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_explain_prints_the_table_and_writes_the_views(tmp_path, capsys):
    out = tmp_path / "views"
    assert main(["explain", "--out", str(out), SEED]) == 0  # on the bundled MiniLM
    printed = capsys.readouterr().out
    e = attnkit.inspect.explain(SEED)
    assert "focus: 'it' (token 10)" in printed and "Rollout" in printed
    for layer in range(e.num_layers):
        best = int(e.focus_rows[layer].mean(0).argmax())
        assert f"\n{layer}      {e.tokens[best]} {float(e.focus_rows[layer].mean(0)[best]):.2f}" in printed
    stem = f"head_L{e.layer}_H{e.head}"
    names = {"attention.html", *(f"{s}.{x}" for s in (stem, "layers_mean", "rollout") for x in ("png", "svg"))}
    assert {p.name for p in out.iterdir()} == names  # and no temporary file left behind
    assert (out / "rollout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (out / f"{stem}.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and ">animal<" in svg  # labels stay text in the SVG
    assert f"wrote 7 files to {out}/ (replacing its previous contents): attention.html, {stem}.png" in printed


def test_explain_a_decoder_checkpoint_without_files(gpt_dir, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["explain", "--model", str(gpt_dir), "--focus", "mat", "--formats", "", "--no-html",
                 "--out", str(out), "The cat sat on the mat."]) == 0
    printed = capsys.readouterr().out
    assert "decoder (causal)" in printed and "focus: 'mat'" in printed
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--focus", "zebra"], "focus word 'zebra' is not in the text"),
    (["--layer", "9"], "layer 9 is out of range"),
    (["--formats", "gif"], "formats must be a non-empty subset of png, svg, pdf"),
    (["--max-tokens", "1"], "max_tokens must be an int >= 2"),
])
def test_explain_bad_options_fail_clearly(argv, message, tmp_path, capsys):
    assert main(["explain", "--out", str(tmp_path), "--no-html", *argv, SEED]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--n", "0"], ["demo", "--window", "-3"], ["embed", "--batch-size", "0", "a"],
                                  ["explain", "--top", "x"]])
def test_sizes_must_be_positive_ints(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "argument --" in capsys.readouterr().err
