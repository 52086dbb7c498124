"""attnkit.models.GPT: presets, cached generation equal to recomputation (static, growing, ring caches;
left-padded batches), sampling options, MoE layers, training on a tiny batch, bad input."""

from __future__ import annotations

import pytest
import torch

from attnkit.models.gpt import GPT, GPTConfig
from helpers import fit, parameters_without_gradient

VARIANTS = {
    "gpt2": dict(),
    "rope-gqa": dict(positions="rope", attention=dict(num_kv_heads=2, bias=False), norm=dict(kind="rms"),
                     ffn=dict(activation="swiglu", bias=False)),
    "alibi-window": dict(positions="alibi", attention=dict(window=3)),
    "rope-window": dict(positions="rope", attention=dict(window=4), tie_embeddings=False),
    # eval-mode MoE drops nothing, so no token's output depends on the other tokens of the call
    "moe": dict(moe=dict(layers=(0, 1), num_experts=4, capacity_factor=1.0)),
}


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("nano", vocab_size=61, num_layers=2, dim=32, **overrides)).eval()


def test_presets_and_overrides():
    config = GPTConfig.preset("llama-tiny", num_layers=2)
    assert (config.positions, config.norm.kind, config.attention.num_kv_heads, config.num_layers) == \
        ("rope", "rms", 2, 2)
    with pytest.raises(ValueError, match=r"GPTConfig.moe.layers \[7\] are not layer indices"):
        GPTConfig.preset("nano", moe=dict(layers=(7,)))
    with pytest.raises(ValueError, match="GPTConfig.attention.num_heads=5 must divide dim=32"):
        GPTConfig.preset("nano", dim=32, attention=dict(num_heads=5))
    with pytest.raises(ValueError, match="AttentionConfig.num_kv_heads=3 must divide num_heads=4"):
        GPTConfig.preset("nano", attention=dict(num_kv_heads=3))
    with pytest.raises(ValueError, match="AttentionConfig.window must be a positive int, got 0"):
        GPTConfig.preset("nano", attention=dict(window=0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_recomputation(variant):
    model = tiny(**VARIANTS[variant]).double()
    ids = torch.randint(0, 61, (2, 12))
    full = model(ids).logits
    kinds = ["static", "growing"] + (["ring"] if model.config.attention.window is not None else [])
    for kind in kinds:
        cache = model.new_cache(kind, max_len=12)
        with torch.no_grad():
            parts = [model(ids[:, :5], cache=cache).logits]
            parts += [model(ids[:, i:i + 1], cache=cache).logits for i in range(5, 12)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=1e-10, msg=kind)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_with_cache_left_padding_equals_one_by_one(variant):
    model = tiny(**VARIANTS[variant])
    prompts = [torch.randint(0, 61, (n,)) for n in (7, 3, 5)]
    alone = [model.generate(p[None], 9)[0, len(p):] for p in prompts]
    no_cache = [model.generate(p[None], 9, use_cache=False)[0, len(p):] for p in prompts]
    batch = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, p in enumerate(prompts):
        batch[row, 7 - len(p):], mask[row, 7 - len(p):] = p, 1
    together = model.generate(batch, 9, attention_mask=mask)[:, 7:]
    for row in range(3):
        assert torch.equal(alone[row], no_cache[row])
        assert torch.equal(together[row], alone[row]), f"row {row}"


@pytest.mark.parametrize("kind", ["static", "growing", "ring"])
def test_left_padded_cached_logits_equal_unpadded(kind):
    """Per-sequence logits of a left-padded batch decoded through each cache equal each sequence's own
    full forward."""
    model = tiny(positions="rope", attention=dict(window=3 if kind == "ring" else None)).double()
    seqs = [torch.randint(0, 61, (n,)) for n in (9, 5)]
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for row, s in enumerate(seqs):
        batch[row, 9 - len(s):], mask[row, 9 - len(s):] = s, 1
    cache = model.new_cache(kind, max_len=9)
    with torch.no_grad():
        steps = [model(batch[:, :6], mask[:, :6], cache=cache).logits]
        steps += [model(batch[:, i:i + 1], mask[:, :i + 1], cache=cache).logits for i in range(6, 9)]
    cached = torch.cat(steps, dim=1)
    for row, s in enumerate(seqs):
        alone = model(s[None]).logits[0]
        torch.testing.assert_close(cached[row, 9 - len(s):], alone, atol=1e-10, rtol=1e-10)
    assert torch.equal(model.generate(batch, 4, attention_mask=mask, cache_kind=kind),
                       model.generate(batch, 4, attention_mask=mask, use_cache=False))


def test_sampling_options():
    model = tiny()
    ids = torch.randint(0, 61, (2, 4))
    greedy = model.generate(ids, 6)
    assert torch.equal(model.generate(ids, 6, temperature=1.5, top_k=1), greedy)
    assert torch.equal(model.generate(ids, 6, temperature=1.0, top_p=1e-6), greedy)
    draw = [model.generate(ids, 6, temperature=1.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    for bad, match in [(dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=match):
            model.generate(ids, 2, **bad)


def test_generate_stops_at_eos_and_pads_with_it():
    model = tiny()
    ids = torch.randint(0, 61, (3, 4))
    free = model.generate(ids, 8)
    eos = int(free[0, 5])  # the second token generated for row 0
    out = model.generate(ids, 8, eos_token_id=eos)
    for row in range(3):
        gen = out[row, 4:].tolist()
        if eos in gen:
            first = gen.index(eos)
            assert all(t == eos for t in gen[first:])
            assert gen[:first] == free[row, 4:4 + first].tolist()


def test_length_limits_are_explained():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match=r"17 tokens exceed GPTConfig.max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, cached \+ new tokens\) = \(1, 3\)"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int, got -3"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), -3)
    with pytest.raises(ValueError, match="exceeds the learned position table's max_seq_len=16"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=61\)"):
        model(torch.full((1, 3), 61))
    with pytest.raises(ValueError, match="ring cache serves sliding-window models"):
        model.new_cache("ring")


def test_moe_layers_return_aux_loss():
    model = tiny(moe=dict(layers=(1,), num_experts=4))
    out = model(torch.randint(0, 61, (2, 8)))
    assert out.aux_loss is not None and out.aux_loss.item() >= 0.99  # Switch loss: >= 1 up to noise
    assert tiny()(torch.randint(0, 61, (2, 8))).aux_loss is None


@pytest.mark.parametrize("kernel", ["dense", "tiled", "sdpa"])
def test_overfits_a_tiny_batch(kernel):
    """30 Adam steps on 4 fixed sequences: next-token loss from ~log(61) = 4.1 to below 0.3, and every
    parameter receives a gradient."""
    model = tiny(positions="rope", attention=dict(num_kv_heads=2), moe=dict(layers=(0,), num_experts=2),
                 kernel=kernel).train()
    data = torch.randint(0, 61, (4, 12), generator=torch.Generator().manual_seed(1))

    def loss_fn():
        out = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 61), data[:, 1:].reshape(-1))
        return loss + 0.01 * out.aux_loss

    _, last = fit(model, loss_fn, steps=30, lr=1e-2)
    assert last < 0.3  # includes the MoE auxiliary term (~0.01)
    assert not parameters_without_gradient(model), parameters_without_gradient(model)


@pytest.mark.parametrize("variant", ["gpt2", "rope-gqa", "rope-window"])
def test_a_reused_cache_continues_a_conversation_as_a_fresh_one(variant):
    """generate(cache=...) with caches an earlier call filled, cut back to a shared prefix (a chat's next turn: the
    template re-renders the reply, so only part of what the caches hold is kept), equals generating the whole new
    prompt from scratch; only the tokens the caches lack are encoded."""
    model = tiny(**VARIANTS[variant])
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 61, (1, 6), generator=g)
    cache = model.new_cache("growing")
    with torch.no_grad():
        turn = model.generate(first, 5, cache=cache)
    assert cache[0].length == 6 + 5 - 1  # every token fed: all but the last one returned
    # the next prompt keeps the first 8 tokens of that turn, then differs
    second = torch.cat((turn[:, :8], torch.randint(0, 61, (1, 4), generator=g)), dim=1)
    for layer in cache:
        layer.truncate(8)
    fed = []
    real = model.forward

    def counting(ids, *args, **kwargs):
        fed.append(ids.shape[1])
        return real(ids, *args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    with torch.no_grad():
        reused = model.generate(second, 7, cache=cache)
    del model.forward
    assert fed[0] == 4  # the prompt's tokens past the kept prefix, not all 12
    with torch.no_grad():
        assert torch.equal(reused, model.generate(second, 7))
    assert cache[0].length == 12 + 7 - 1


def test_a_reused_cache_is_checked():
    model = tiny(**VARIANTS["rope-gqa"])
    ids = torch.randint(0, 61, (1, 5))
    cache = model.new_cache("growing")
    with torch.no_grad():
        model.generate(ids, 3, cache=cache)  # holds 7 tokens
        with pytest.raises(ValueError, match="cache holds 7 tokens, so input_ids must extend them by at least one"):
            model.generate(torch.randint(0, 61, (1, 7)), 2, cache=cache)
        with pytest.raises(ValueError, match="cache= holds earlier tokens' keys and values: it needs use_cache=True"):
            model.generate(torch.randint(0, 61, (1, 9)), 2, cache=cache, use_cache=False)
        with pytest.raises(ValueError, match="cache must be a list of 2 layer caches"):
            model.generate(torch.randint(0, 61, (1, 9)), 2, cache=cache[:1])
        cache[1].truncate(3)
        with pytest.raises(ValueError, match=r"the layer caches hold different numbers of tokens \(\[3, 7\]\)"):
            model.generate(torch.randint(0, 61, (1, 9)), 2, cache=cache)
        with pytest.raises(ValueError, match="length must be a non-negative int"):
            cache[0].truncate(-1)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_a_reused_cache_of_a_length_dependent_rope_is_encoded_anew(kind):
    """Dynamic NTK and LongRoPE rotate keys by the sequence's length: a cache filled for a prompt longer than the
    trained context and cut back to a prefix of a prompt within it holds keys rotated for the other length, so
    generate encodes the whole prompt again and equals a fresh call (it differed by up to 5e-4 when the cache was
    kept)."""
    from attnkit.nn.positions import RopeScaling

    scaling = RopeScaling("dynamic", 4.0, original_max_len=16) if kind == "dynamic" else \
        RopeScaling("longrope", 4.0, original_max_len=16, short_factor=(1.0, 1.5, 2.0, 3.0),
                    long_factor=(2.0, 3.0, 5.0, 8.0))  # head_dim 8: four frequencies
    model = tiny(positions="rope", attention=dict(num_heads=4, rope=dict(scaling=scaling)), max_seq_len=64).double()
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 61, (1, 20), generator=g)  # past the trained 16 tokens
    second = torch.cat((first[:, :10], torch.randint(0, 61, (1, 3), generator=g)), dim=1)  # 13, within them
    with torch.no_grad():
        fresh = model.generate(second, 4)
        cache = model.new_cache("growing")
        model.generate(first, 2, cache=cache)
        for layer in cache:
            layer.truncate(10)
        stale = model(second[:, 10:], cache=cache).logits[:, -1]  # the kept keys, by hand: wrong
        assert (stale - model(second).logits[:, -1]).abs().max() > 1e-6  # so the case below is not vacuous
        for layer in cache:
            layer.truncate(10)
        assert torch.equal(model.generate(second, 4, cache=cache), fresh)
        anew = model.new_cache("growing")
        model.generate(second, 4, cache=anew)
    for kept, encoded in zip(cache, anew):  # every key as a fresh call rotated it, the kept prefix too
        assert kept.length == encoded.length == 13 + 3
        torch.testing.assert_close(kept.k[:, :, :16], encoded.k[:, :, :16], rtol=0, atol=1e-12)
