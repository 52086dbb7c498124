"""attnkit.hub with task heads, DistilBERT and ELECTRA, and ``strict=False``, against ``transformers``.

Every checkpoint is a tiny random model built here, its weights re-drawn with a fixed seed and written with
``save_pretrained`` (no download). For each head of each family: the logits within ATOL of transformers', the loss
for the same labels, ``id2label`` kept, and ``hub.save`` written under the class's name so that transformers'
``AutoModelFor<Task>`` reads it back to the same outputs.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit import hub
from attnkit.hub import CheckpointError
from attnkit.models import BERT, GPT, BERTConfig, GPTConfig, TaskConfig
from attnkit.models.heads import task_loss
from helpers import assert_close, magnitude

transformers = pytest.importorskip("transformers")

VOCAB = 96
N = 9  # tokens per row; the rows hold 9, 6 and 3 real tokens
LENGTHS = (9, 6, 3)
# float32 through two layers: attnkit's and transformers' matmuls sum in other orders, ~1e-6 of the compared
# tensor's magnitude max(1, max |expected|) (as test_hub's ATOL); a loss is compared at the same scale
ATOL = 1e-5
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TASKS = {"sequence_classification": "ForSequenceClassification", "token_classification": "ForTokenClassification",
         "question_answering": "ForQuestionAnswering"}
AUTO = {"sequence_classification": "AutoModelForSequenceClassification",
        "token_classification": "AutoModelForTokenClassification",
        "question_answering": "AutoModelForQuestionAnswering", "masked_lm": "AutoModelForMaskedLM"}


def _peaked(model, std: float = 0.3) -> None:
    """Every parameter re-drawn from N(0, std), LayerNorm gains from N(1, std): the default N(0, 0.02) leaves
    attention nearly uniform and the logits nearly equal, so a wrong head could pass."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.normal_(1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0, std)


def _saved(model, directory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------
# the BERT family: one tiny config per model_type

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BERTLIKE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=40, **NO_DROPOUT)
FAMILIES = {  # model_type -> (transformers' class prefix, config factory, pad id)
    "bert": ("Bert", lambda **kw: transformers.BertConfig(**BERTLIKE, pad_token_id=0, **kw), 0),
    "roberta": ("Roberta", lambda **kw: transformers.RobertaConfig(**BERTLIKE, type_vocab_size=1, pad_token_id=1,
                                                                   **kw), 1),
    "xlm-roberta": ("XLMRoberta", lambda **kw: transformers.XLMRobertaConfig(**BERTLIKE, type_vocab_size=1,
                                                                             pad_token_id=1, **kw), 1),
    "distilbert": ("DistilBert", lambda **kw: transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40, dropout=0.0,
        attention_dropout=0.0, pad_token_id=0, **kw), 0),
    # embeddings 16 wide, projected to the layers' 32 (embeddings_project)
    "electra": ("Electra", lambda **kw: transformers.ElectraConfig(**{**BERTLIKE, "embedding_size": 16},
                                                                   pad_token_id=0, **kw), 0),
}
SAVED_AS = {"xlm-roberta": "Roberta"}  # attnkit writes RoBERTa's classes (the same model in transformers)


def right_padded(pad: int, seed: int = 0):
    """(ids, mask) (3, N): rows of LENGTHS real tokens (ids above the pad id), then the pad id."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(N) < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(pad + 1, VOCAB, (3, N), generator=g)
    return torch.where(mask.bool(), ids, torch.full_like(ids, pad)), mask


def _labels(task: str, mask):
    """Labels for a task, in attnkit's form and in transformers' keyword arguments."""
    g = torch.Generator().manual_seed(1)
    if task == "sequence_classification":
        labels = torch.randint(0, 3, (3,), generator=g)
        return labels, {"labels": labels}
    if task == "token_classification":
        labels = torch.where(mask.bool(), torch.randint(0, 3, mask.shape, generator=g), -100)  # padding ignored
        return labels, {"labels": labels}
    # start and end positions in each row; the last row's end lies outside the input and is ignored
    spans = torch.tensor([[1, 4], [0, 5], [2, 50]])
    return spans, {"start_positions": spans[:, 0], "end_positions": spans[:, 1]}


def _logits(task: str, out):
    if task == "question_answering" and hasattr(out, "start_logits"):
        return torch.stack((out.start_logits, out.end_logits), dim=-1)
    return out.logits


def _real(task: str, logits):
    """The compared part: every row for a sequence's logits, the real tokens' for tokens' logits (RoBERTa's padded
    positions take other position ids in transformers)."""
    if task == "sequence_classification":
        return [logits]
    return [logits[i, :n] for i, n in enumerate(LENGTHS)]


def _compare(task: str, got, expected, what: str, atol: float = ATOL) -> None:
    scale = atol * magnitude(expected)
    for i, (g, e) in enumerate(zip(_real(task, got), _real(task, expected))):
        assert_close(g, e, atol=scale, what=f"{what} {i}")


BERT_CASES = [(f, t) for f in FAMILIES for t in TASKS if not (f == "xlm-roberta" and t != "sequence_classification")]


@pytest.mark.parametrize("family, task", BERT_CASES, ids=[f"{f}-{t}" for f, t in BERT_CASES])
def test_bert_family_heads_match_transformers_and_save_back(family, task, tmp_path):
    prefix, make, pad = FAMILIES[family]
    labelled = task != "question_answering"
    config = make(**({"id2label": LABELS} if labelled else {}))
    config._attn_implementation = "eager"
    hf = getattr(transformers, f"{prefix}{TASKS[task]}")(config).eval()
    _peaked(hf)
    model, _ = hub.load(_saved(hf, tmp_path / "hf"))
    assert isinstance(model, BERT) and model.config.task.kind == task
    assert model.config.task.id2label == (LABELS if labelled else {0: "LABEL_0", 1: "LABEL_1"})
    ids, mask = right_padded(pad)
    if pad == 1 and task == "question_answering":
        # RoBERTa's padded tokens take other positions in transformers, and the span loss's softmax runs over
        # them too: its rows are compared unpadded
        filler = torch.randint(2, VOCAB, ids.shape, generator=torch.Generator().manual_seed(5))
        ids, mask = torch.where(mask.bool(), ids, filler), torch.ones_like(mask)
    labels, hf_labels = _labels(task, mask)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, **hf_labels)
        got = model(ids, attention_mask=mask, labels=labels)
    _compare(task, got.logits, _logits(task, expected), "logits row")
    assert_close(got.loss, expected.loss, atol=ATOL * magnitude(expected.loss), what="loss")
    assert model(ids, attention_mask=mask).loss is None

    hub.save(model, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["architectures"] == [f"{SAVED_AS.get(family, prefix)}{TASKS[task]}"]
    assert {int(k): v for k, v in written["id2label"].items()} == model.config.task.id2label
    again = getattr(transformers, AUTO[task]).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        _compare(task, _logits(task, again(input_ids=ids, attention_mask=mask)), _logits(task, expected),
                 "transformers on attnkit's save, row")
        reloaded = hub.load(tmp_path / "ours")[0]
        assert reloaded.config == model.config
        assert torch.equal(reloaded(ids, attention_mask=mask).logits, got.logits)


def test_distilbert_masked_lm_matches_transformers(tmp_path):
    hf = transformers.DistilBertForMaskedLM(FAMILIES["distilbert"][1]()).eval()
    _peaked(hf)
    model, _ = hub.load(_saved(hf, tmp_path / "hf"))
    assert model.config.mlm_head and not model.config.pooler and model.config.type_vocab_size == 0
    ids, mask = right_padded(0)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ids, -100)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = model(ids, attention_mask=mask, labels=labels)
    _compare("token_classification", got.logits, expected.logits, "mlm logits row")
    assert got.mlm_logits is got.logits
    assert_close(got.loss, expected.loss, atol=ATOL * magnitude(expected.loss), what="masked-LM loss")
    hub.save(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["DistilBertForMaskedLM"]
    with torch.no_grad():
        again = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()(ids, attention_mask=mask)
    _compare("token_classification", again.logits, expected.logits, "transformers on attnkit's save, row")


@pytest.mark.parametrize("family", ["distilbert", "electra"])
def test_distilbert_and_electra_hidden_states_match_transformers(family, tmp_path):
    prefix, make, pad = FAMILIES[family]
    config = make()
    config._attn_implementation = "eager"
    hf = getattr(transformers, f"{prefix}Model")(config).eval()
    _peaked(hf)
    model, _ = hub.load(_saved(hf, tmp_path / "hf"), kernel="dense")
    c = model.config
    assert not c.pooler and c.task is None and not c.mlm_head
    assert (c.type_vocab_size, c.embedding_dim) == ((0, None) if family == "distilbert" else (2, 16))
    ids, mask = right_padded(pad)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, attention_mask=mask)
    assert got.pooler_output is None and got.logits is None
    _compare("token_classification", got.last_hidden_state, expected, "last_hidden_state row")
    with pytest.raises(ValueError, match="labels need a head"):
        model(ids, labels=ids)
    hub.save(model, tmp_path / "ours")  # written as its own model_type: BERT cannot express it
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == (family, [f"{prefix}Model"])
    with torch.no_grad():
        again = transformers.AutoModel.from_pretrained(tmp_path / "ours").eval()(ids, attention_mask=mask)
    _compare("token_classification", again.last_hidden_state, expected, "transformers on attnkit's save, row")


# --------------------------------------------------------------------------------------------------
# sequence classification's losses


PROBLEMS = [  # (num_labels, problem_type in config.json, labels)
    (1, None, torch.tensor([0.5, -1.0, 2.0])),  # inferred: regression
    (3, "regression", torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 0.5], [1.0, 1.0, -2.0]])),
    (3, None, torch.tensor([2, 0, 1])),  # inferred from integer labels: single label
    (3, "single_label_classification", torch.tensor([2, 0, 1])),
    (3, None, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),  # inferred: multi-label
    (3, "multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
]


@pytest.mark.parametrize("num_labels, problem_type, labels", PROBLEMS,
                         ids=["regression-1", "regression-3", "single-inferred", "single", "multi-inferred", "multi"])
def test_sequence_classification_loss_per_problem_type(num_labels, problem_type, labels, tmp_path):
    config = FAMILIES["bert"][1](num_labels=num_labels, problem_type=problem_type)
    config._attn_implementation = "eager"
    hf = transformers.BertForSequenceClassification(config).eval()
    _peaked(hf)
    model, _ = hub.load(_saved(hf, tmp_path))
    assert model.config.task.problem_type == problem_type and model.config.task.num_labels == num_labels
    ids, mask = right_padded(0, seed=3)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = model(ids, attention_mask=mask, labels=labels)
    assert_close(got.loss, expected.loss, atol=ATOL * magnitude(expected.loss), what="loss")
    # the formula alone, on transformers' own logits: the same number
    assert_close(task_loss(model.config.task, expected.logits, labels), expected.loss, atol=1e-7, what="formula")


# --------------------------------------------------------------------------------------------------
# decoders: the last non-padding token


def _decoder_config(model_type: str):
    if model_type == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0,
                                       id2label=LABELS)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=None,
                  eos_token_id=None, id2label=LABELS)
    if model_type == "gemma3_text":
        return transformers.Gemma3TextConfig(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    return transformers.LlamaConfig(**common)


DECODERS = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
            "gemma3_text": "Gemma3TextForSequenceClassification"}


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_sequence_classification_matches_transformers(model_type, tmp_path):
    config = _decoder_config(model_type)
    config._attn_implementation = "eager"
    hf = getattr(transformers, DECODERS[model_type])(config).eval()
    _peaked(hf, 0.2)
    model, _ = hub.load(_saved(hf, tmp_path / "hf"))
    assert isinstance(model, GPT) and model.head is None
    assert model.config.task == TaskConfig("sequence_classification", 3, id2label=LABELS, dropout=0.0,
                                           pooling="last_token", pad_id=0)
    ids, mask = right_padded(0, seed=4)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = model(ids, attention_mask=mask, labels=labels)
        # left padding: transformers takes the positions from the caller; the rightmost token that is not the pad
        # id is classified either way
        left, left_mask = ids.roll(1, 1), mask.roll(1, 1)
        left[2] = torch.cat((ids[2, 3:], ids[2, :3]))
        left_mask[2] = torch.cat((mask[2, 3:], mask[2, :3]))
        positions = (left_mask.cumsum(-1) - 1).clamp_min(0)
        expected_left = hf(input_ids=left, attention_mask=left_mask, position_ids=positions).logits
        got_left = model(left, attention_mask=left_mask).logits
    assert got.logits.shape == (3, 3)
    assert_close(got.logits, expected.logits, atol=ATOL * magnitude(expected.logits), what="logits")
    assert_close(got_left, expected_left, atol=ATOL * magnitude(expected_left), what="left-padded logits")
    assert_close(got.loss, expected.loss, atol=ATOL * magnitude(expected.loss), what="loss")

    hub.save(model, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["architectures"] == [DECODERS[model_type]] and written["pad_token_id"] == 0
    assert "score.weight" in load_file(tmp_path / "ours" / "model.safetensors")
    with torch.no_grad():
        again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
        assert_close(again(input_ids=ids, attention_mask=mask).logits, expected.logits,
                     atol=ATOL * magnitude(expected.logits), what="transformers on attnkit's save")
        reloaded = hub.load(tmp_path / "ours")[0]
        assert reloaded.config == model.config and torch.equal(reloaded(ids, attention_mask=mask).logits, got.logits)


def test_a_decoder_without_pad_id_takes_one_row_as_transformers_does(tmp_path):
    config = _decoder_config("gpt2")
    config.pad_token_id = None
    hf = transformers.GPT2ForSequenceClassification(config).eval()
    _peaked(hf, 0.2)
    model, _ = hub.load(_saved(hf, tmp_path))
    assert model.config.task.pad_id is None
    ids = right_padded(0)[0]
    with pytest.raises(ValueError, match="batch sizes > 1"):
        hf(input_ids=ids)
    with pytest.raises(ValueError, match="one row at a time"):
        model(ids)
    with torch.no_grad():
        expected = hf(input_ids=ids[:1]).logits
        assert_close(model(ids[:1]).logits, expected, atol=ATOL * magnitude(expected), what="one row")


# --------------------------------------------------------------------------------------------------
# which head: config.json's architectures, else the tensors


def _copy(source, target, **config_changes):
    target.mkdir()
    shutil.copy(source / "model.safetensors", target / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return target


def test_the_head_comes_from_architectures_else_from_the_tensors(tmp_path):
    hf = transformers.RobertaForSequenceClassification(FAMILIES["roberta"][1](id2label=LABELS)).eval()
    _peaked(hf)
    directory = _saved(hf, tmp_path / "hf")
    # no architectures: classifier.out_proj is RoBERTa's sequence classifier alone
    model = hub.load_model(_copy(directory, tmp_path / "unnamed", architectures=None))
    assert model.config.task.kind == "sequence_classification" and model.config.task.pooling == "roberta"
    # named: the class decides, and a class that does not fit the tensors is refused with their list
    with pytest.raises(CheckpointError) as info:
        hub.load(_copy(directory, tmp_path / "token", architectures=["RobertaForTokenClassification"]))
    assert "classifier.out_proj.weight" in info.value.unexpected and "classifier.weight" in info.value.missing
    # BERT's classifier.weight could be a sequence's or a token's: without architectures it is not guessed
    bert = transformers.BertForTokenClassification(FAMILIES["bert"][1]()).eval()
    bert_dir = _copy(_saved(bert, tmp_path / "bert"), tmp_path / "bert-unnamed", architectures=None)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(2\):\n    classifier.bias, classifier.weight"):
        hub.load(bert_dir)
    # a class attnkit has no head for: said, and the tensors decide
    with pytest.warns(UserWarning, match="'BertForMultipleChoice' is not supported"), pytest.raises(CheckpointError):
        hub.load(_copy(bert_dir, tmp_path / "choice", architectures=["BertForMultipleChoice"]))


# --------------------------------------------------------------------------------------------------
# strict=False


def test_strict_false_loads_what_fits_and_names_what_it_ignored(tmp_path):
    hf = transformers.BertModel(FAMILIES["bert"][1]()).eval()
    _peaked(hf)
    directory = _saved(hf, tmp_path / "hf")
    state = load_file(directory / "model.safetensors")
    state["encoder.layer.0.adapter.weight"] = torch.zeros(4, 32)  # no place in attnkit's BERT
    state["encoder.layer.1.adapter.weight"] = torch.zeros(4, 32)
    del state["encoder.layer.1.output.dense.bias"]
    changed = _copy(directory, tmp_path / "extra")
    save_file(state, changed / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        hub.load(changed)
    assert info.value.unexpected == ["encoder.layer.0.adapter.weight", "encoder.layer.1.adapter.weight"]
    assert info.value.missing == ["encoder.layer.1.output.dense.bias"]
    with pytest.warns(UserWarning) as record:
        model, _ = hub.load(changed, strict=False)
    messages = [str(w.message) for w in record]
    assert any("ignored: encoder.layer.{0,1}.adapter.weight" in m for m in messages), messages
    assert any("no encoder.layer.1.output.dense.bias in the checkpoint" in m for m in messages), messages
    assert {w.filename for w in record} == {__file__}  # the warnings name the caller's line
    ids, mask = right_padded(0)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = model(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(model.layers[1].ffn.down.bias, torch.zeros(32))  # kept its initialization
    with torch.no_grad():
        hf.encoder.layer[1].output.dense.bias.zero_()
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    _compare("token_classification", hidden, expected, "row")
    with pytest.warns(UserWarning) as again:
        assert isinstance(hub.load_model(changed, strict=False), BERT)
    assert [str(w.message) for w in again] == messages
    # a tensor of the wrong shape is still an error
    state["embeddings.word_embeddings.weight"] = torch.zeros(VOCAB + 1, 32)
    save_file(state, changed / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"expected \(96, 32\) got \(97, 32\)"):
        hub.load(changed, strict=False)
    with pytest.raises(TypeError, match="strict must be a bool"):
        hub.load(directory, strict="no")


def test_strict_false_reads_the_base_of_a_head_attnkit_lacks(tmp_path):
    """ElectraForPreTraining's discriminator head is not modelled: strict=False gives its base model."""
    config = FAMILIES["electra"][1]()
    config._attn_implementation = "eager"
    hf = transformers.ElectraForPreTraining(config).eval()
    _peaked(hf)
    directory = _saved(hf, tmp_path)
    with pytest.raises(CheckpointError, match="discriminator_predictions"):
        with pytest.warns(UserWarning, match="ElectraForPreTraining"):
            hub.load(directory)
    with pytest.warns(UserWarning) as record:
        model, _ = hub.load(directory, strict=False)
    assert "discriminator_predictions.dense.bias" in str(record[-1].message)
    ids, mask = right_padded(0)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        _compare("token_classification", model(ids, attention_mask=mask).last_hidden_state, expected, "row")


# --------------------------------------------------------------------------------------------------
# configs


def test_task_configs_are_checked_and_completed():
    config = BERTConfig.preset("tiny", task=TaskConfig("token_classification", 5))
    task = config.task
    assert not config.pooler and BERTConfig.preset("tiny").pooler  # as transformers' classes: none to read
    assert task.dropout == 0.1 and task.pooling is None and task.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert BERTConfig.preset("tiny", task={"kind": "question_answering"}).task.dropout == 0.0
    assert GPTConfig.preset("nano", task=TaskConfig("sequence_classification", pad_id=0)).task.pooling == "last_token"
    for make, match in [
        (lambda: TaskConfig("summarization"), "kind must be one of"),
        (lambda: TaskConfig("question_answering", 3), "num_labels=2"),
        (lambda: TaskConfig("sequence_classification", 2, id2label={0: "a", 2: "b"}), "labels 0..1"),
        (lambda: TaskConfig("token_classification", pooling="roberta"), "pooling applies to sequence"),
        (lambda: BERTConfig.preset("tiny", task=TaskConfig("sequence_classification"), pooler=False),
         "reads the pooler"),
        (lambda: BERTConfig.preset("tiny", task=TaskConfig("sequence_classification"), mlm_head=True),
         "mlm_head=True takes neither"),
        (lambda: GPTConfig.preset("nano", task=TaskConfig("token_classification")), "sequence-classification head"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()



BUILT = [  # an attnkit config -> the model_type and class save writes: the first family whose class holds its head
    (dict(task={"kind": "token_classification", "num_labels": 4}), "bert", "BertForTokenClassification"),
    (dict(task={"kind": "sequence_classification", "problem_type": "multi_label_classification"}), "bert",
     "BertForSequenceClassification"),
    # RoBERTa's classifier reads no pooler, so none is built (pooler=None) and BERT's class cannot hold it
    (dict(task={"kind": "sequence_classification", "pooling": "roberta"}), "roberta",
     "RobertaForSequenceClassification"),
    (dict(type_vocab_size=0, task={"kind": "sequence_classification", "pooling": "distilbert"}), "distilbert",
     "DistilBertForSequenceClassification"),
    (dict(embedding_dim=16, task={"kind": "question_answering"}), "electra", "ElectraForQuestionAnswering"),
]


@pytest.mark.parametrize("overrides, model_type, hf_class", BUILT, ids=[c for _, _, c in BUILT])
def test_heads_built_in_attnkit_save_as_their_transformers_class(overrides, model_type, hf_class, tmp_path):
    model = BERT(BERTConfig.preset("tiny", vocab_size=VOCAB, dropout=0.0, **overrides)).eval()
    _peaked(model)
    hub.save(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == (model_type, [hf_class])
    kind = model.config.task.kind
    hf = getattr(transformers, AUTO[kind]).from_pretrained(tmp_path).eval()
    ids, mask = right_padded(0)  # pad id 0 in the padding, as RoBERTa's positions need
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        _compare(kind, got, _logits(kind, hf(input_ids=ids, attention_mask=mask)), "row")
