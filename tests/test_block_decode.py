"""A decoding step's block after the attention (output projection, residuals, RMSNorms, gated feed-forward, Gemma's
sandwich norms) runs as one C call (``native.decode_ffn``) where the whole layer's call (test_decode_layer.py) does
not serve: its result equals the PyTorch path's within float32 rounding — the same block with the call declined,
and the uncached forward of the whole sequence, which takes forward's own path — for every gated activation, with
biases and with Gemma's norms, and the caller's input is left alone."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, needs_native_symbol, small_decoder

from attnkit.functional.kernels import native
from attnkit.models import GPT


needs_native = needs_native_symbol("attnkit_decode_ffn")

VARIANTS = {
    "llama-swiglu": dict(attention=dict(num_heads=4, num_kv_heads=2, bias=False),
                         ffn=dict(hidden=48, activation="swiglu", bias=False), norm=dict(kind="rms", eps=1e-6)),
    "biases-geglu": dict(attention=dict(num_heads=4, bias=True), ffn=dict(hidden=40, activation="geglu", bias=True),
                         norm=dict(kind="rms", eps=1e-5)),
    "gemma-sandwich": dict(attention=dict(num_heads=4, num_kv_heads=1, head_dim=12),
                           ffn=dict(hidden=56, activation="geglu_tanh", bias=False),
                           norm=dict(kind="rms", eps=1e-6, unit_offset=True, sandwich=True), embedding_scale=5.6),
}


def _model(name: str) -> GPT:
    return small_decoder(**VARIANTS[name])


@needs_native
@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_decoding_equals_the_pytorch_path(name, monkeypatch):
    model = _model(name)
    calls = []
    real = native.decode_ffn
    def counting(call: native.FFNCall) -> bool:  # the C calls that ran
        done = real(call)
        if done:
            calls.append(tuple(call.x.shape))
        return done

    monkeypatch.setattr(native, "decode_ffn", counting)
    # the whole layer's C call (tests/test_decode_layer.py) declines, as for a cache it does not serve: the attention
    # in PyTorch, the rest of the block in this C call
    monkeypatch.setattr(native, "decode_layer", lambda attn, ffn: None)
    for batch in (1, 3, 8):
        ids = torch.randint(0, 71, (batch, 9), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            fused = model.generate(ids, 6)
            cache = model.new_cache(max_len=16)
            model(ids[:, :8], cache=cache)
            step_fused = model(ids[:, 8:], cache=cache).logits
        assert calls, "the decoding steps did not take the C call"
        calls.clear()
        monkeypatch.setenv("ATTNKIT_NATIVE", "0")  # the C call declines: the same block in PyTorch
        with torch.no_grad():
            plain = model.generate(ids, 6)
            cache = model.new_cache(max_len=16)
            model(ids[:, :8], cache=cache)
            step_plain = model(ids[:, 8:], cache=cache).logits
        monkeypatch.delenv("ATTNKIT_NATIVE")
        assert not calls
        assert torch.equal(fused, plain), name
        assert_close(step_fused, step_plain, atol=2e-5 * max(1.0, float(step_plain.abs().max())), what=name)
        with torch.no_grad():  # and the whole sequence at once: more than 8 rows, so forward's own attend/feed path
            whole = model(ids).logits[:, -1:]
        assert_close(step_fused, whole, atol=2e-5 * max(1.0, float(whole.abs().max())), what=f"{name}, uncached")


@needs_native
def test_the_callers_input_is_left_alone_and_training_takes_pytorch(monkeypatch):
    model = _model("llama-swiglu")
    block = model.layers[0]
    x = torch.randn(2, 1, 32)
    before = x.clone()
    ran = []
    real = native.decode_ffn
    monkeypatch.setattr(native, "decode_ffn", lambda call: ran.append(real(call)) or ran[-1])
    with torch.no_grad():
        y = block(x, causal=True)
    assert ran == [True]  # the C call added into its own copy of x
    assert torch.equal(x, before) and not torch.equal(y, x)
    # training: the C call is never made (the patched one fails the test if it is)
    monkeypatch.setattr(native, "decode_ffn", lambda call: pytest.fail("training must not take the C call"))
    model.train()
    block(torch.randn(2, 1, 32, requires_grad=True), causal=True)


@needs_native
def test_a_lora_wrapped_model_decodes_through_its_adapters():
    """PEFT's LoRA wraps q/k/v, the output projection and the feed-forward: a decoding step must run the adapters'
    forward (the fused C paths read the bare weights, so they must step aside), equal to the uncached forward."""
    peft = pytest.importorskip("peft")
    model = _model("llama-swiglu")
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "gate", "up", "down"]
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero (no change): make the adapters matter
                parameter.normal_(0.0, 0.5)
    lora.eval()
    ids = torch.randint(0, 71, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.new_cache(max_len=16)
        model(ids[:, :8], cache=cache)
        step = model(ids[:, 8:], cache=cache).logits
        whole = model(ids).logits[:, -1:]
        with lora.disable_adapter():
            bare = model(ids).logits[:, -1:]
    assert (whole - bare).abs().max() > 1e-2  # the adapters change the output
    assert_close(step, whole, atol=2e-5 * max(1.0, float(whole.abs().max())), what="LoRA decoding step")


@needs_native
def test_use_onednn_false_turns_the_fused_block_off_too(monkeypatch):
    """The switch that turns the inference paths off for a comparison reaches the fused decoding block, and
    handing back what it returned restores it."""
    from attnkit.nn import use_onednn

    model = _model("llama-swiglu")
    calls = []
    real, real_layer = native.decode_ffn, native.decode_layer
    monkeypatch.setattr(native, "decode_ffn", lambda call: calls.append(1) or real(call))
    monkeypatch.setattr(native, "decode_layer", lambda attn, ffn: calls.append(2) or real_layer(attn, ffn))
    ids = torch.randint(0, 71, (1, 9), generator=torch.Generator().manual_seed(0))
    previous = use_onednn(False)
    try:
        with torch.no_grad():
            model.generate(ids, 3)
        assert not calls
    finally:
        assert use_onednn(previous) is False  # the setting it had, whatever oneDNN's availability
    with torch.no_grad():
        model.generate(ids, 3)
    assert calls and set(calls) == {2}  # every step's layers in one C call each
