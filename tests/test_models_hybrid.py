"""attnkit.models.HybridLM: attention and SSM layers by pattern; streaming state equals the full forward."""

from __future__ import annotations

import pytest
import torch

from attnkit.models.hybrid import HybridConfig, HybridLM, SSMLayer
from attnkit.nn import ssm as ssm_module
from helpers import fit, parameters_without_gradient


def tiny(**overrides) -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(HybridConfig.preset("tiny", vocab_size=50, dim=32, **overrides)).eval()


def test_layers_follow_the_pattern():
    model = tiny(pattern="MAAM")
    kinds = ["M" if isinstance(layer, SSMLayer) else "A" for layer in model.layers]
    assert "".join(kinds) == "MAAM"
    with pytest.raises(ValueError, match="pattern must be a non-empty string"):
        HybridConfig.preset("tiny", pattern="MXA")


@pytest.mark.parametrize("prefill, chunk_size", [(4, None), (9, 4)], ids=["one-chunk", "across-chunks"])
def test_decoding_state_equals_full_forward(prefill, chunk_size, monkeypatch):
    """Prefill, then one token at a time, equals the full forward; with chunk_size 4 the 9-token prefill
    spans three scan chunks, so the state is carried across chunks. The prompt goes through each SSM
    layer's chunked scan once, every later token through its recurrence (``step``)."""
    model = tiny().double()
    mixers = [layer.mixer for layer in model.layers if isinstance(layer, SSMLayer)]
    if chunk_size is not None:
        for mixer in mixers:
            mixer.chunk_size = chunk_size
    ids = torch.randint(0, 50, (2, 13))
    full = model(ids).logits
    calls = []

    def spy(layer, name, original):
        def recorded(*args, **kwargs):
            calls.append((layer, name))
            return original(*args, **kwargs)
        return recorded

    for i, mixer in enumerate(mixers):
        monkeypatch.setattr(mixer, "step", spy(i, "step", mixer.step))
    monkeypatch.setattr(ssm_module, "selective_scan_chunked", spy(None, "scan", ssm_module.selective_scan_chunked))
    state = model.new_state(13)
    with torch.no_grad():
        parts = [model(ids[:, :prefill], state=state).logits]
        parts += [model(ids[:, i:i + 1], state=state).logits for i in range(prefill, 13)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=1e-10)
    assert [name for _, name in calls[:len(mixers)]] == ["scan"] * len(mixers)  # the prompt, in every layer
    for i in range(len(mixers)):
        assert [name for layer, name in calls[len(mixers):] if layer == i] == ["step"] * (13 - prefill)
    assert len(calls) == len(mixers) * (1 + 13 - prefill)


def test_generate_equals_greedy_recomputation():
    model = tiny()
    ids = torch.randint(0, 50, (2, 5))
    out = model.generate(ids, 6)
    expected = ids
    with torch.no_grad():
        for _ in range(6):
            expected = torch.cat((expected, model(expected).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_overfits_a_tiny_batch(kernel):
    """40 Adam steps on 4 fixed sequences: loss from ~log(50) = 3.9 to below 0.3; every parameter gets a
    gradient."""
    model = tiny(kernel=kernel).train()
    data = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))

    def loss_fn():
        logits = model(data[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), data[:, 1:].reshape(-1))

    _, last = fit(model, loss_fn, steps=40, lr=1e-2)
    assert last < 0.3
    assert not parameters_without_gradient(model), parameters_without_gradient(model)

