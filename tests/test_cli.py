"""The command line: ``attnkit embed`` and ``attnkit generate`` print what the library computes."""

from __future__ import annotations

import io
import json

import pytest
import tokenizers
import torch

import attnkit
from attnkit import hub
from attnkit.cli import main
from attnkit.models import GPT, GPTConfig

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


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a byte-level BPE tokenizer trained here (no download)."""
    directory = tmp_path_factory.mktemp("gpt")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(str(directory))
    tokenizer = hub.load_tokenizer(directory, model_type="gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, dim=32, num_layers=2, num_heads=2))
    hub.save(model, directory, tokenizer)
    return directory


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
