"""attnkit.integrations.transformers: attnkit as the attention of ``transformers`` models.

Tiny random models are built here from configs (no download) and run twice on the same weights, with
transformers' eager attention and with ``attn_implementation="attnkit"``; their outputs at real tokens must agree.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attnkit.integrations.transformers as integration
from attnkit.integrations.transformers import register
from helpers import assert_close, assert_raises_naming, magnitude, max_abs_error, padded_batch

transformers = pytest.importorskip("transformers")

VOCAB = 64
N = 11  # longer than Gemma 2's sliding window of 4 below
# Absolute, on outputs up to ~8: float32 through 2-4 layers, attnkit's kernels and eager differ by at most 4.6e-6 here
# (measured, every kernel and padding). In float64, BERT agrees within 2e-15 (the decoders' eager softmax is float32).
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}
EXACT = ("auto", "dense", "sdpa", "tiled")


def llama(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides}))


def gemma2(**overrides):
    # soft-capping at 2 bites on logits of this size; layers alternate sliding (window 4) and full attention
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=64,
                  sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                  initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**{**fields, **overrides}))


def qwen3(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, initializer_range=0.3,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**fields, **overrides}))


def bert(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, initializer_range=0.3, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertModel(transformers.BertConfig(**{**fields, **overrides}), add_pooling_layer=False)


MODELS = {"llama": llama, "gemma2": gemma2, "qwen3": qwen3, "bert": bert}
LAYERS = {"llama": 2, "gemma2": 4, "qwen3": 2, "bert": 2}


def build(name: str, dtype: torch.dtype = torch.float32, **overrides):
    torch.manual_seed(0)
    return MODELS[name](**overrides).to(dtype).eval()


def batch(padding: str):
    """(ids (2, N), attention mask (2, N) or None for "none"): row 1 full, row 0 with 3 pad tokens."""
    return padded_batch(VOCAB, N, padding)


def output(model, ids, mask, implementation: str) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class Calls:
    """Counts the ``attnkit.attention`` calls the integration makes, and keeps their keyword arguments."""

    def __init__(self, monkeypatch):
        self.kwargs: list[dict] = []
        real = integration.attention

        def counted(*args, **kwargs):
            self.kwargs.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(integration, "attention", counted)


def real_tokens(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of (B, N, ...) at real tokens: a pad query that may see nothing outputs zeros in attnkit and an
    average of every value in eager, and neither reaches a real token."""
    return t.flatten(0, 1) if mask is None else t[mask.bool()]


def cases():
    for model in MODELS:
        kernels = ("auto", "dense", "tiled") if model == "gemma2" else EXACT  # sdpa refuses softcap
        for kernel in kernels:
            for padding in ("none", "right", "left"):
                yield pytest.param(model, kernel, padding, id=f"{model}-{kernel}-{padding}")


# parity with eager attention


@pytest.mark.parametrize("model_name, kernel, padding", list(cases()))
def test_model_matches_eager(model_name, kernel, padding, monkeypatch):
    model = build(model_name)
    ids, mask = batch(padding)
    expected = output(model, ids, mask, "eager")
    calls = Calls(monkeypatch)
    actual = output(model, ids, mask, register(kernel=kernel))
    assert len(calls.kwargs) == LAYERS[model_name], "every layer's attention goes through attnkit"
    assert {c["kernel"] for c in calls.kwargs} == {kernel}
    expected, actual = real_tokens(expected, mask), real_tokens(actual, mask)
    assert_close(actual, expected, atol=ATOL[torch.float32], what=f"{model_name} {kernel}")


def test_float64_bert_matches_eager_to_1e10():
    """In float64 only BERT's eager attention is a float64 reference: the decoders' eager softmax runs in
    float32 (``softmax(..., dtype=torch.float32)``), ~1e-6 off here, and turns a left-padded row's
    float64-minimum mask into -inf, hence NaN (their float32 parity is the test above)."""
    model = build("bert", torch.float64)
    ids, mask = batch("left")
    expected = real_tokens(output(model, ids, mask, "eager"), mask)
    for kernel in EXACT:
        actual = real_tokens(output(model, ids, mask, register(kernel=kernel)), mask)
        assert_close(actual, expected, atol=ATOL[torch.float64], what=f"bert {kernel}")


def test_the_inputs_exercise_softcap_windows_and_padding():
    """Gemma 2's soft-capping and sliding windows and the padding each change the outputs compared above, so
    parity there cannot hold by their being ignored."""
    ids, mask = batch("left")
    reference = output(build("gemma2"), ids, mask, "eager")
    for overrides in ({"attn_logit_softcapping": None}, {"sliding_window": 64}):
        changed = output(build("gemma2", **overrides), ids, mask, "eager")
        assert max_abs_error(changed, reference) > 1e-2, overrides
    model = build("llama")
    no_pad = output(model, ids, None, "eager")
    assert max_abs_error(real_tokens(no_pad, mask), real_tokens(output(model, ids, mask, "eager"), mask)) > 1e-2


@pytest.mark.parametrize("kind", ["eager mask (0 / min)", "float bias"])
def test_4d_float_masks_match_eager(kind, monkeypatch):
    """A 4-D additive mask handed to the model as is: a 0 / min mask becomes a bool mask (no bias), any other
    float mask a bool mask of its entries above the minimum plus the rest as a bias."""
    model = build("llama")
    ids, _ = batch("none")
    visible = torch.ones(N, N, dtype=torch.bool).tril()
    visible[5, :3] = False  # not plain causal
    smallest = torch.finfo(torch.float32).min
    mask4d = torch.zeros(2, 1, N, N).masked_fill(~visible, smallest)
    if kind == "float bias":
        mask4d = mask4d + torch.randn(2, 1, N, N, generator=torch.Generator().manual_seed(2)) * visible
    expected = output(model, ids, mask4d, "eager")
    calls = Calls(monkeypatch)
    actual = output(model, ids, mask4d, register())
    assert all(c["mask"].dtype == torch.bool for c in calls.kwargs)
    assert all((c["bias"] is None) == (kind != "float bias") for c in calls.kwargs)
    assert_close(actual, expected, atol=ATOL[torch.float32], what=kind)


def t5():
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                   dropout_rate=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_t5_position_bias_matches_eager(kernel, padding, monkeypatch):
    """T5's relative position bias arrives as ``position_bias`` (every self-, cross- and causal attention)."""
    model = t5()
    ids, mask = batch(padding)

    def logits(implementation: str) -> torch.Tensor:
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :7]).logits

    expected = logits("eager")
    calls = Calls(monkeypatch)
    actual = logits(register(kernel=kernel))
    assert len(calls.kwargs) == 6 and any(c["bias"] is not None for c in calls.kwargs)
    assert_close(actual, expected, atol=ATOL[torch.float32], what=f"t5 {kernel}")


# decoding with a KV cache


@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_llama_greedy_generate_matches_eager(kernel, cache):
    """Greedy tokens with the KV cache equal eager's on a left-padded batch. The static cache's prefill is the
    mask-free, top-left causal call with more keys than queries (its empty slots)."""
    model = build("llama")
    ids, mask = batch("left")
    options = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                   cache_implementation=cache)
    model.set_attn_implementation("eager")
    expected = model.generate(ids, **options)
    model.set_attn_implementation(register(kernel=kernel))
    assert torch.equal(model.generate(ids, **options), expected)
    full = ids[1:]  # no padding: the static prefill passes no mask at all
    model.set_attn_implementation("eager")
    expected = model.generate(full, max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation=cache)
    model.set_attn_implementation("attnkit")
    assert torch.equal(model.generate(full, max_new_tokens=8, do_sample=False, pad_token_id=0,
                                      cache_implementation=cache), expected)


def test_gemma2_greedy_generate_matches_eager():
    """Sliding-window layers decode past their window with the cache."""
    model = build("gemma2")
    ids, mask = batch("left")
    options = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    model.set_attn_implementation("eager")
    expected = model.generate(ids, **options)
    model.set_attn_implementation(register())
    assert torch.equal(model.generate(ids, **options), expected)


# training, registration and errors


def test_dropout_only_while_training(monkeypatch):
    model = build("llama", attention_dropout=0.25)
    ids, mask = batch("right")
    calls = Calls(monkeypatch)
    model.set_attn_implementation(register())
    model(input_ids=ids, attention_mask=mask)
    assert {c["dropout"] for c in calls.kwargs} == {0.0}
    model.train()
    first = model(input_ids=ids, attention_mask=mask).logits
    assert {c["dropout"] for c in calls.kwargs[LAYERS["llama"]:]} == {0.25}
    assert max_abs_error(first, model(input_ids=ids, attention_mask=mask).logits) > 0  # fresh dropout each call


@pytest.mark.parametrize("kernel", EXACT)
def test_gradients_match_eager(kernel):
    """Parameter gradients (up to ~800 here) within 2e-5 of their magnitude; measured at most 3.1e-6 (tiled)."""
    model = build("llama")
    ids, mask = batch("left")
    model.set_attn_implementation("eager")
    model(input_ids=ids, attention_mask=mask).logits[mask.bool()].square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_attn_implementation(register(kernel=kernel))
    model(input_ids=ids, attention_mask=mask).logits[mask.bool()].square().sum().backward()
    for n, p in model.named_parameters():
        assert_close(p.grad, expected[n], atol=2e-5 * magnitude(expected[n]), what=n)


def test_register_twice_and_by_another_name(monkeypatch):
    assert register() == register() == "attnkit"
    assert register(kernel="dense", name="attnkit-dense") == "attnkit-dense"
    model = build("qwen3")
    ids, mask = batch("right")
    calls = Calls(monkeypatch)
    expected = output(model, ids, mask, "attnkit")
    register(kernel="tiled")  # a new registration replaces the old one under the same name
    actual = output(model, ids, mask, "attnkit")
    output(model, ids, mask, "attnkit-dense")
    assert [c["kernel"] for c in calls.kwargs] == ["auto"] * 2 + ["tiled"] * 2 + ["dense"] * 2
    assert_close(actual, expected, atol=ATOL[torch.float32], what="re-registered")


def test_from_pretrained_with_attn_implementation(tmp_path):
    model = build("llama")
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=register()).eval()
    assert loaded.config._attn_implementation == "attnkit"
    ids, mask = batch("left")
    expected = real_tokens(output(model, ids, mask, "eager"), mask)
    with torch.no_grad():
        actual = real_tokens(loaded(input_ids=ids, attention_mask=mask).logits, mask)
    assert_close(actual, expected, atol=ATOL[torch.float32], what="from_pretrained")


def test_bad_kernel_lists_registered_kernels():
    assert_raises_naming(ValueError, ["nope", "dense", "sdpa", "tiled"], register, kernel="nope")


@pytest.mark.parametrize("name", ["", "eager", "sdpa", "my_flash_attention", "org/repo"])
def test_reserved_names_are_refused(name):
    assert_raises_naming(ValueError, ["name", repr(name)], register, name=name)


def test_sdpa_kernel_refuses_softcap_by_name():
    model = build("gemma2")
    ids, _ = batch("none")
    model.set_attn_implementation(register(kernel="sdpa"))
    assert_raises_naming(ValueError, ["sdpa", "softcap"], model, input_ids=ids)


def test_attention_sinks_are_refused():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="s_aux"):
        integration.attnkit_attention(torch.nn.Module(), q, q, q, None, s_aux=torch.zeros(2))


def test_import_attnkit_does_not_import_transformers():
    code = ("import sys, attnkit, attnkit.integrations.transformers; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
