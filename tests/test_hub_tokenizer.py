"""attnkit.hub.Tokenizer gives the ids ``transformers.AutoTokenizer`` gives: the bundled MiniLM's WordPiece
(tokenizer.json and vocab.txt), and tiny byte-level BPEs trained here (GPT-2 and RoBERTa layouts)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from attnkit import hub
from attnkit.models import GPT, AttentionConfig, GPTConfig

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "Hello, world!",
    "Héllo Wörld — café, naïve, Ångström.",
    "Emoji: 🤗🚀 and symbols #$%&*() <|endoftext|>",
    "  leading and   multiple   spaces\tand\ttabs\nnewlines ",
    "中文字符 and 日本語",
    "don't stop-believing; it's 3.14!",
    "[MASK] is a special token",
    "",
    "The quick brown fox jumps over the lazy dog. " * 40,  # ~400 tokens: truncated at the limit
]


def hf_batch(tok, texts, max_length):
    out = tok(texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def assert_same_as_transformers(ours: hub.Tokenizer, hf, *, max_length: int | None) -> None:
    ids, mask = ours.encode(SENTENCES)
    expected_ids, expected_mask = hf_batch(hf, SENTENCES, max_length)
    assert torch.equal(mask, expected_mask)
    differ = [text for text, a, b in zip(SENTENCES, ids, expected_ids) if not torch.equal(a, b)]
    assert not differ, f"different ids for {differ}"
    for text, row, n in zip(SENTENCES, ids, mask.sum(-1).tolist()):
        assert ours.tokens(text) == hf.convert_ids_to_tokens(row[:n].tolist())
        for skip in (False, True):
            assert ours.decode(row[:n], skip_special_tokens=skip) == hf.decode(row[:n], skip_special_tokens=skip)


# --------------------------------------------------------------------------------------------------
# WordPiece: the bundled all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm():
    directory = hub.bundled_minilm()
    return directory, transformers.AutoTokenizer.from_pretrained(directory)


def test_minilm_tokenizer_matches_transformers_and_truncates_where_sentence_transformers_does(minilm):
    directory, hf = minilm
    ours = hub.load_tokenizer(directory)
    assert ours.max_length == 256 and ours.model_max_length == 512  # sentence_bert_config / tokenizer_config
    assert (ours.pad_id, ours.eos_id, ours.padding_side) == (0, None, "right")
    assert_same_as_transformers(ours, hf, max_length=256)
    ids, _ = ours.encode(SENTENCES[-1:])
    assert ids.shape == (1, 256) and ids[0, 0] == 101 and ids[0, -1] == 102  # [CLS] ... [SEP] kept
    assert ours.encode(SENTENCES[-1:], truncation=False)[0].shape[1] > 256


def test_vocab_txt_alone_gives_the_same_ids(minilm, tmp_path):
    directory, hf = minilm
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "sentence_bert_config.json"):
        shutil.copy(directory / name, tmp_path / name)
    assert_same_as_transformers(hub.load_tokenizer(tmp_path), hf, max_length=256)


@pytest.mark.parametrize("files", [("tokenizer.json",), ("vocab.txt",)], ids=["tokenizer.json", "vocab.txt"])
def test_tokenizer_config_decides_lower_casing(minilm, tmp_path, files):
    directory, _ = minilm
    for name in files:
        shutil.copy(directory / name, tmp_path / name)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    hf = transformers.BertTokenizer.from_pretrained(tmp_path)
    ours = hub.load_tokenizer(tmp_path)
    assert ours.tokens("Héllo World") == ["[CLS]", "[UNK]", "[UNK]", "[SEP]"]  # uncased vocabulary, cased text
    assert_same_as_transformers(ours, hf, max_length=512)


# --------------------------------------------------------------------------------------------------
# byte-level BPE: GPT-2 and RoBERTa layouts


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """vocab.json + merges.txt of a 400-token byte-level BPE trained on the test sentences."""
    directory = tmp_path_factory.mktemp("bpe")
    bpe = tokenizers.ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(SENTENCES * 5, vocab_size=400, min_frequency=1, special_tokens=specials,
                            show_progress=False)
    bpe.save_model(str(directory))
    return directory


@pytest.mark.parametrize("model_type", ["gpt2", "roberta"])
def test_byte_level_bpe_matches_transformers_from_vocab_files_and_tokenizer_json(bpe_files, tmp_path, model_type):
    vocab_dir, json_dir = tmp_path / "vocab", tmp_path / "json"
    shutil.copytree(bpe_files, vocab_dir)
    (vocab_dir / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 400,
                                                        "bos_token_id": 0, "eos_token_id": 0}))
    hf = transformers.AutoTokenizer.from_pretrained(vocab_dir)
    hf.save_pretrained(json_dir)  # writes tokenizer.json + tokenizer_config.json
    if hf.pad_token is None:  # GPT-2 has none; padding with eos is the usual choice, and attnkit's default
        hf.pad_token = hf.eos_token
    for directory in (vocab_dir, json_dir):
        ours = hub.load_tokenizer(directory, model_type=model_type)
        assert_same_as_transformers(ours, hf, max_length=None)
        assert ours.eos_id == hf.eos_token_id
    if model_type == "gpt2":
        assert ours.pad_id == ours.eos_id == 0  # GPT-2 has no pad token: eos pads, the mask hides it


def test_left_padding_for_generation(bpe_files):
    ours = hub.load_tokenizer(bpe_files, model_type="gpt2")
    ids, mask = ours.encode(["Hello, world!", "Hi"], padding_side="left")
    alone, _ = ours.encode(["Hi"])
    n = alone.shape[1]
    assert mask[1].tolist() == [0] * (ids.shape[1] - n) + [1] * n and ids[1, -n:].tolist() == alone[0].tolist()
    assert (ids[1, :-n] == ours.pad_id).all()
    assert ours.max_length is None  # no tokenizer_config.json: no limit, so nothing to pad up to
    with pytest.raises(ValueError, match=r"padding='max_length' needs max_length"):
        ours.encode(["Hi"], padding="max_length")
    ids, mask = ours.encode(["Hi"], padding="max_length", max_length=6, padding_side="left")
    assert ids.shape == (1, 6) and mask[0].tolist() == [0] * (6 - n) + [1] * n


# --------------------------------------------------------------------------------------------------
# saving, options and errors


def test_saved_tokenizer_reads_back_in_attnkit_and_transformers(minilm, tmp_path):
    directory, hf = minilm
    hub.load_tokenizer(directory).save(tmp_path)
    again = hub.load_tokenizer(tmp_path)
    assert (again.max_length, again.model_max_length) == (256, 512)
    assert_same_as_transformers(again, transformers.AutoTokenizer.from_pretrained(tmp_path), max_length=256)
    assert_same_as_transformers(again, hf, max_length=256)


def test_encode_options(minilm):
    ours = hub.load_tokenizer(minilm[0])
    ids, mask = ours.encode(["a b c", "a"], padding="max_length", max_length=8)
    assert ids.shape == mask.shape == (2, 8) and mask.sum().item() == 5 + 3
    ids, _ = ours.encode(["a b c"], add_special_tokens=False)
    assert ours.decode(ids[0]) == "a b c"
    ids, mask = ours.encode([])
    assert ids.shape == mask.shape == (0, 0)


def test_no_tokenizer_files_give_none(tmp_path):
    assert hub.load_tokenizer(tmp_path) is None


@pytest.mark.parametrize("call, error, message", [
    (lambda t: t.encode("one text"), TypeError, r"texts must be a list of strings \(wrap a single text as \[text\]\)"),
    (lambda t: t.encode([1, 2]), TypeError, r"texts must be a list of strings.*\['int'\]"),
    (lambda t: t.encode(["a"], max_length=0), ValueError, r"^max_length must be a positive int, got 0$"),
    (lambda t: t.encode(["a"], max_length=2.5), TypeError, r"^max_length must be a positive int, got float 2\.5$"),
    (lambda t: t.tokens("a", max_length=True), TypeError, r"^max_length must be a positive int, got bool True$"),
    (lambda t: t.encode(["a"], padding="longest-first"), ValueError, r"padding must be 'longest' or 'max_length'"),
    (lambda t: t.encode(["a"], padding_side="up"), ValueError, r"padding_side must be 'right' or 'left', got 'up'"),
    (lambda t: t.decode(torch.zeros(2, 3, dtype=torch.long)), ValueError, r"ids must be one sequence \(N,\), got"),
    (lambda t: t.tokens(["a"]), TypeError, r"text must be a str, got list"),
], ids=["str", "ints", "max_length", "max_length-float", "tokens-max_length-bool", "padding", "side", "decode-2d",
        "tokens-list"])
def test_errors_name_the_argument(minilm, call, error, message):
    with pytest.raises(error, match=message):
        call(hub.load_tokenizer(minilm[0]))


def test_hub_save_writes_the_tokenizer_beside_the_model(bpe_files, tmp_path):
    tokenizer = hub.load_tokenizer(bpe_files, model_type="gpt2")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=16, dim=16, num_layers=1,
                          attention=AttentionConfig(num_heads=2)))
    hub.save(model, tmp_path, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == tokenizer.eos_id
    _, again = hub.load(tmp_path)
    assert again.encode(SENTENCES[:3])[0].tolist() == tokenizer.encode(SENTENCES[:3])[0].tolist()
    assert again.eos_id == tokenizer.eos_id
