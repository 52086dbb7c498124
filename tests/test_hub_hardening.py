"""attnkit.hub against hostile or broken checkpoints (issue 18): saves that fail half-way, stale files, configs
that ask for gigabytes, shard paths leading out of the directory, files that are not what their name says.

Every checkpoint here is a tiny random attnkit model written by ``hub.save`` (kilobytes); the only real files
are the bundled all-MiniLM-L6-v2 tokenizer's. Nothing is downloaded and nothing large is allocated: the test
of configs that would need tens of GB runs in a child process whose address space is capped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import pytest
import torch
from helpers import load_with_memory_capped
from safetensors.torch import load_file, save_file

import attnkit.files
from attnkit import hub
from attnkit.hub import CheckpointError
from attnkit.models import BERT, GPT, BERTConfig, GPTConfig


def tiny_bert(**overrides) -> BERT:
    torch.manual_seed(0)
    return BERT(BERTConfig.preset("tiny", dropout=0.0, **overrides)).eval()  # vocab 128, dim 32, 2 layers


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(1)
    fields = dict(vocab_size=64, max_seq_len=16, dim=16, num_layers=2, attention=dict(num_heads=2), ffn=dict(hidden=32),
                  dropout=0.0)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def hidden(model, ids=None) -> torch.Tensor:
    ids = torch.arange(1, 9).view(1, 8) if ids is None else ids
    with torch.no_grad():
        out = model(ids)
    return out.last_hidden_state if isinstance(model, BERT) else out.logits


def contents(directory: Path) -> dict[str, bytes | None]:
    """Each entry's bytes (None for a directory)."""
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return hub.load_tokenizer(hub.bundled_minilm())  # max_length 256 (sentence_bert_config), model_max_length 512


@pytest.fixture
def bert_checkpoint(tmp_path, minilm_tokenizer):
    """A tiny BERT saved with the MiniLM tokenizer in tmp_path/ckpt: (model, directory)."""
    model = tiny_bert()
    return model, hub.save(model, tmp_path / "ckpt", minilm_tokenizer)


# --------------------------------------------------------------------------------------------------
# 7. save replaces the checkpoint as a whole, or not at all


def _disk_full(*args):
    raise OSError("disk full")


def _fail_tokenizer(monkeypatch):
    monkeypatch.setattr(hub.Tokenizer, "save", _disk_full)


def _fail_config(monkeypatch):
    monkeypatch.setattr("attnkit.hub.files.write_text", _disk_full)


def _fail_swap(monkeypatch):
    """The rename that moves the new directory in fails (after the old one was moved aside)."""
    rename = os.rename

    def failing(src, dst):
        if str(src).endswith(".new"):
            raise OSError("rename failed")
        rename(src, dst)
    monkeypatch.setattr(os, "rename", failing)


def _fail_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", _disk_full)


@pytest.mark.parametrize("fail", [_fail_tokenizer, _fail_config, _fail_swap, _fail_fsync],
                         ids=["tokenizer", "config", "swap", "fsync"])
def test_a_failure_mid_save_leaves_the_old_checkpoint_loadable_and_no_temporary_directory(
        bert_checkpoint, minilm_tokenizer, monkeypatch, fail):
    model, directory = bert_checkpoint
    before, expected = contents(directory), hidden(model)
    fail(monkeypatch)
    with pytest.raises(OSError):
        hub.save(tiny_gpt(vocab_size=minilm_tokenizer.vocab_size), directory, minilm_tokenizer)
    monkeypatch.undo()
    assert contents(directory) == before
    assert [p.name for p in directory.parent.iterdir()] == ["ckpt"]  # no .ckpt.*.new / .ckpt.*.old left
    again, tokenizer = hub.load(directory)
    assert isinstance(again, BERT) and torch.equal(hidden(again), expected) and tokenizer.max_length == 256


def test_every_file_of_a_save_is_fsynced(tmp_path, minilm_tokenizer, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file descriptors")
    synced, fsync = [], os.fsync

    def recording(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        fsync(fd)
    monkeypatch.setattr(os, "fsync", recording)
    directory = hub.save(tiny_bert(), tmp_path / "ckpt", minilm_tokenizer)
    assert {p.name for p in directory.iterdir()} <= set(synced)


def test_nothing_of_an_earlier_save_survives_a_new_one(bert_checkpoint, minilm_tokenizer):
    model, directory = bert_checkpoint
    torch.save({"stale": torch.zeros(2)}, directory / "pytorch_model.bin")  # e.g. from an older transformers save
    assert (directory / "sentence_bert_config.json").is_file()
    unlimited = hub.load_tokenizer(hub.bundled_minilm())
    unlimited.max_length = unlimited.model_max_length  # so no sentence_bert_config.json is written
    hub.save(model, directory, unlimited)
    assert not (directory / "sentence_bert_config.json").exists() and not (directory / "pytorch_model.bin").exists()
    assert hub.load(directory)[1].max_length == 512  # a stale max_seq_length 256 would be read back
    gpt = tiny_gpt()
    hub.save(gpt, directory)  # no tokenizer: the BERT's tokenizer files must not be read back with the GPT
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    again, tokenizer = hub.load(directory)
    assert isinstance(again, GPT) and tokenizer is None and torch.equal(hidden(again), hidden(gpt))


def test_tokenizer_save_removes_a_stale_truncation_limit(tmp_path, minilm_tokenizer):
    minilm_tokenizer.save(tmp_path)
    unlimited = hub.load_tokenizer(hub.bundled_minilm())
    unlimited.max_length = unlimited.model_max_length
    unlimited.save(tmp_path)
    assert hub.load_tokenizer(tmp_path).max_length == 512


def test_save_refuses_a_directory_holding_other_files(bert_checkpoint):
    directory = bert_checkpoint[1]
    (directory / "notes.txt").write_text("mine")
    (directory / "runs").mkdir()
    before = contents(directory)
    with pytest.raises(FileExistsError, match=r"holds files that are not part of a checkpoint \(notes\.txt, runs/\)"):
        hub.save(tiny_gpt(), directory)
    assert contents(directory) == before


def test_save_targets(tmp_path, monkeypatch):
    model = tiny_gpt()
    nested = hub.save(model, tmp_path / "a" / "b")  # parents are created
    assert torch.equal(hidden(hub.load(nested)[0]), hidden(model))
    (tmp_path / "empty").mkdir()
    hub.save(model, tmp_path / "empty")  # an empty directory is a fine target
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b", target_is_directory=True)
    hub.save(tiny_bert(), tmp_path / "link")  # replaced where the link points; the link stays a link
    assert (tmp_path / "link").is_symlink() and isinstance(hub.load(tmp_path / "a" / "b")[0], BERT)
    with pytest.raises(ValueError, match="directory is an empty string; pass '.'"):
        hub.save(model, "")
    with pytest.raises(NotADirectoryError, match="is a file"):
        hub.save(model, nested / "config.json")
    monkeypatch.chdir(nested)
    with pytest.raises(ValueError, match="is the current working directory"):
        hub.save(model, ".")


def test_atomic_directory_restores_the_old_directory_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old.txt").write_text("old")
    _fail_swap(monkeypatch)
    with pytest.raises(OSError, match="rename failed"), attnkit.files.atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and contents(target) == {"old.txt": b"old"}


# --------------------------------------------------------------------------------------------------
# 8. config.json is checked against the tensors' shapes before anything large is allocated


def _with_config(model, directory: Path, **changes) -> Path:
    hub.save(model, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))
    return directory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space through /proc and rlimit")
def test_configs_asking_for_gigabytes_fail_fast_without_allocating(tmp_path):
    cases = {  # each would need 6-13 GB (or 10**6 layers of modules) if the model were built from the config
        "layers": (_with_config(tiny_bert(), tmp_path / "layers", num_hidden_layers=10 ** 6),
                   r"config\.json has num_hidden_layers=1000000, but the weights hold tensors of 2 layer\(s\)"),
        "vocab": (_with_config(tiny_bert(), tmp_path / "vocab", vocab_size=5 * 10 ** 7),
                  r"embeddings\.word_embeddings\.weight expected \(50000000, 32\) got \(128, 32\)"),
        "positions": (_with_config(tiny_gpt(), tmp_path / "positions", n_positions=10 ** 8),
                      r"transformer\.wpe\.weight expected \(100000000, 16\) got \(16, 16\)"),
    }
    loads = load_with_memory_capped([str(d) for d, _ in cases.values()])
    for (name, (directory, message)), (kind, text, seconds) in zip(cases.items(), loads):
        assert kind == "CheckpointError", f"{name}: {kind}: {text[:500]}"
        assert str(directory / "model.safetensors") in text and re.search(message, text), text
        assert seconds < 10, f"{name}: {seconds:.1f} s"


def test_a_config_with_more_layers_and_another_vocabulary_lists_both(tmp_path):
    directory = _with_config(tiny_bert(), tmp_path, num_hidden_layers=3, vocab_size=200)
    with pytest.raises(CheckpointError) as info:
        hub.load(directory)
    error = info.value
    assert error.problems == ["config.json has num_hidden_layers=3, but the weights hold tensors of 2 layer(s)"]
    assert error.wrong_shapes == [("embeddings.word_embeddings.weight", (200, 32), (128, 32))]
    assert len(error.missing) == 16 and all(n.startswith("encoder.layer.2.") for n in error.missing)
    assert not error.unexpected and "\n    encoder.layer.2.attention.output.LayerNorm.bias,\n" in str(error)


# --------------------------------------------------------------------------------------------------
# 9. shards stay inside the checkpoint directory


def _shard(directory: Path, names: tuple[str, str] | None = None) -> Path:
    """Split directory/model.safetensors into two shards named ``names`` (written where they point) and an
    index naming them."""
    names = names or ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    for name, part in zip(names, halves):
        path = directory / name
        if not path.exists():  # /dev/zero is named, not written
            save_file({k: state[k] for k in part}, path)
    index = {"metadata": {}, "weight_map": {k: name for name, part in zip(names, halves) for k in part}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def test_shards_inside_the_directory_load(tmp_path):
    model = tiny_bert()
    directory = _shard(hub.save(model, tmp_path / "ckpt"))
    assert torch.equal(hidden(hub.load(directory)[0]), hidden(model))


@pytest.mark.parametrize("shard", ["../elsewhere/model-00002-of-00002.safetensors", "/dev/zero"],
                         ids=["parent", "absolute"])
def test_shards_outside_the_directory_are_refused(tmp_path, shard):
    (tmp_path / "elsewhere").mkdir()
    directory = _shard(hub.save(tiny_bert(), tmp_path / "ckpt"), ("model-00001-of-00002.safetensors", shard))
    index = directory / "model.safetensors.index.json"
    with pytest.raises(CheckpointError) as info:
        hub.load(directory)
    assert str(info.value) == f"{index}: shard {shard!r} lies outside the checkpoint directory; refused"


def test_a_shard_linking_out_of_the_directory_is_refused(tmp_path):
    directory = _shard(hub.save(tiny_bert(), tmp_path / "ckpt"))
    outside = tmp_path / "outside.safetensors"
    shutil.move(directory / "model-00002-of-00002.safetensors", outside)
    (directory / "model-00002-of-00002.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"shard 'model-00002-of-00002\.safetensors' lies outside"):
        hub.load(directory)


def test_the_hugging_face_cache_layout_loads(tmp_path):
    """In huggingface_hub's cache every file of snapshots/<rev>/ links to ../../blobs/<hash>: shards beside
    the index's own target are inside the checkpoint."""
    model = tiny_bert()
    source = _shard(hub.save(model, tmp_path / "source"))
    blobs, snapshot = tmp_path / "repo" / "blobs", tmp_path / "repo" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(source.iterdir())):
        shutil.copy(path, blobs / f"hash{i}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"hash{i}")
    assert torch.equal(hidden(hub.load(snapshot)[0]), hidden(model))


# --------------------------------------------------------------------------------------------------
# 12. errors name the file and say what is wrong, in one line


class _Call:
    """Pickled as a call of os.getcwd: what an unsafe pickle would run."""

    def __reduce__(self):
        return os.getcwd, ()


def _write(name: str, data: bytes | None = None, *, drop: tuple[str, ...] = (), save=None):
    def change(directory: Path) -> Path:
        for other in drop:
            (directory / other).unlink()
        if save is not None:
            save(directory / name)
        else:
            (directory / name).write_bytes(data)
        return directory / name
    return change


def _truncated(directory: Path) -> Path:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _torch_save(value, name="pytorch_model.bin"):
    return _write(name, drop=("model.safetensors",), save=lambda path: torch.save(value, path))


def _cut_zip(directory: Path) -> Path:
    path = _torch_save({"a": torch.zeros(100)})(directory)
    path.write_bytes(path.read_bytes()[:200])
    return path


BROKEN = {
    "config-not-json": (_write("config.json", b"not json"), r"not valid JSON \(Expecting value: line 1 column 1"),
    "config-nested": (_write("config.json", b"[" * 100_000), "its JSON is nested too deeply"),
    "config-not-utf8": (_write("config.json", b"\xff\xfe{}"), "not a UTF-8 text file"),
    "config-a-list": (_write("config.json", b"[1, 2]"), "must hold a JSON object, got a JSON list"),
    "tokenizer-not-json": (_write("tokenizer.json", b"{nope"), "not valid JSON"),
    "tokenizer-not-a-tokenizer": (_write("tokenizer.json", b'{"version": "1.0"}'),
                                  r"not a tokenizer the tokenizers library can read \("),
    "tokenizer-config-not-json": (_write("tokenizer_config.json", b"nope"), "not valid JSON"),
    "vocab-not-utf8": (_write("vocab.txt", b"\xff\xfe\x00", drop=("tokenizer.json",)), "not a WordPiece vocabulary"),
    "safetensors-garbage": (_write("model.safetensors", b"garbage garbage"), "not a valid safetensors file"),
    "safetensors-truncated": (_truncated, "not a valid safetensors file"),
    "bin-empty": (_write("pytorch_model.bin", b"", drop=("model.safetensors",)),
                  r"not a readable PyTorch file of tensors \(EOFError, the file is empty or cut short\)"),
    "bin-garbage": (_write("pytorch_model.bin", b"not a pickle", drop=("model.safetensors",)),
                    "not a readable PyTorch file of tensors"),
    "bin-unsafe-pickle": (_torch_save({"a": _Call()}), r"unsupported GLOBAL posix\.getcwd"),
    "bin-cut-zip": (_cut_zip, "PytorchStreamReader failed reading zip archive"),
    "bin-not-tensors": (_torch_save([torch.zeros(2)]), "expected a dict of tensor name -> tensor"),
    "index-weight-map-list": (_write("model.safetensors.index.json", b'{"weight_map": ["a.safetensors"]}',
                                     drop=("model.safetensors",)),
                              ("weight_map must be a non-empty JSON object of tensor name -> shard file, "
                               "got a JSON list")),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_files_give_one_line_naming_the_file(bert_checkpoint, case):
    if case == "bin-unsafe-pickle" and os.name != "posix":
        pytest.skip("the pickled function's module is posix here")
    change, message = BROKEN[case]
    path = change(bert_checkpoint[1])
    with pytest.raises(CheckpointError, match=message) as info:
        hub.load(bert_checkpoint[1])
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    shown = "".join(traceback.format_exception(info.value))
    assert "weights_only" not in shown and "Re-running" not in shown  # never advise loading pickles unsafely


def test_empty_names_are_refused():
    for call in (lambda: hub.load(""), lambda: hub.load("  "), lambda: hub.load_model("")):
        with pytest.raises(ValueError, match="is an empty string; pass '.' to mean the current directory"):
            call()


def test_the_mismatch_message_groups_layers_one_category_per_heading(tmp_path):
    model = tiny_bert(num_layers=6)
    directory = hub.save(model, tmp_path)
    state = load_file(directory / "model.safetensors")
    for i in range(6):
        del state[f"encoder.layer.{i}.output.dense.bias"]
        state[f"encoder.layer.{i}.intermediate.dense.weight"] = torch.zeros(65, 32)
        state[f"encoder.layer.{i}.extra_{i % 2}.weight"] = torch.zeros(1)
    for i in (0, 1, 2, 3, 5, 7, 8, 9, 10):
        state[f"encoder.layer.{i}.adapter.weight"] = torch.zeros(1)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        hub.load(directory)
    error = info.value
    assert len(error.missing) == 6 and len(error.unexpected) == 15 and len(error.wrong_shapes) == 6
    assert str(error).splitlines() == [
        f"{directory / 'model.safetensors'}: the checkpoint does not fit the model",
        "  missing tensors (6):",
        "    encoder.layer.{0..5}.output.dense.bias",
        "  unexpected tensors (15):",
        "    encoder.layer.{0..3,5,7..10}.adapter.weight, encoder.layer.{0,2,4}.extra_0.weight,",
        "    encoder.layer.{1,3,5}.extra_1.weight",
        "  wrong shapes (6):",
        "    encoder.layer.{0..5}.intermediate.dense.weight expected (64, 32) got (65, 32)",
    ]


def test_a_long_mismatch_message_wraps_at_100_columns(tmp_path):
    directory = hub.save(tiny_bert(num_layers=3), tmp_path)
    state = load_file(directory / "model.safetensors")
    save_file({k.replace("encoder.layer.", "encoder.layers."): v for k, v in state.items()},
              directory / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        hub.load(directory)
    lines = str(info.value).splitlines()
    assert len(info.value.missing) == len(info.value.unexpected) == 48
    assert lines[1:3] == ["  config.json has num_hidden_layers=3, but the weights hold tensors of 0 layer(s)",
                          "  missing tensors (48):"]
    assert lines[3] == "    encoder.layer.{0..2}.attention.output.LayerNorm.bias,"
    assert max(map(len, lines[1:])) <= 100 and len(lines) > 8
