"""Attention against attribution (``attnkit.inspect.attribution``), each method against an independent computation.

Tiny random Llama (grouped-query heads, RoPE) and BERT are built in ``transformers`` from configs (no download),
saved and loaded into attnkit. The references are computed in ``transformers`` with its eager attention, whose
``output_attentions`` are the very probabilities its forward multiplies the values by: their gradient is
dy/dA without any formula of ours. Gradient x input comes from a Jacobian of the focus vector, integrated
gradients from a midpoint Riemann sum, the ablation from re-running the model without the token.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit import hub
from attnkit.inspect import explain
from attnkit.inspect.attribution import (ABLATION, ATTENTION_GRADIENT, GAP, GRADIENT_INPUT, INTEGRATED, LAST,
                                         MEAN, METHODS, ROLLOUT, attribute, ranks, spearman)

transformers = pytest.importorskip("transformers")
scipy_stats = pytest.importorskip("scipy.stats")

VOCAB, N, DIM = 64, 9, 32
# float32 models: the two implementations' gradients agree to ~1e-6 relative here; IG's Riemann sums differ in
# their points (Captum's Gauss-Legendre against midpoints), hence its looser tolerance
RTOL, ATOL = 2e-4, 1e-6


def llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config)


def bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertModel(config, add_pooling_layer=False)


def build(name: str, directory):
    """(name, transformers model with eager attention, the same weights in attnkit, ids (1, N))."""
    torch.manual_seed(1)
    reference = {"llama": llama, "bert": bert}[name]().eval()
    reference.save_pretrained(directory, safe_serialization=True)
    model, _ = hub.load(directory)
    reference.set_attn_implementation("eager")
    ids = torch.randint(1, VOCAB, (1, N), generator=torch.Generator().manual_seed(2))
    return name, reference, model.eval(), ids


@pytest.fixture(scope="module", params=["llama", "bert"])
def pair(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return build("llama", tmp_path_factory.mktemp("decoder"))


def focus_of(name: str) -> int:
    return N - 2 if name == "llama" else 4  # a decoder's focus sees 0..N-2; an encoder's sees all


class Reference:
    """What is explained, computed in transformers: ``outputs(embeds)`` -> (C,) for the focus token (a decoder:
    log-probabilities at the focus; an encoder: the focus token's final vector), the attentions with it."""

    def __init__(self, name: str, model, ids: torch.Tensor):
        self.name, self.model, self.ids = name, model, ids
        self.causal = name == "llama"
        self.focus = focus_of(name)
        self.embeds = model.get_input_embeddings()(ids).detach()  # (1, N, E)
        with torch.no_grad():
            first, _ = self.outputs(self.embeds)
        self.predicted = int(first.argmax()) if self.causal else None
        self.norm = 1.0 if self.causal else float(first.norm())

    def outputs(self, embeds: torch.Tensor, mask: torch.Tensor | None = None):
        out = self.model(inputs_embeds=embeds, attention_mask=mask, output_attentions=True)
        if self.causal:
            return torch.log_softmax(out.logits[0, self.focus], -1), out.attentions
        return out.last_hidden_state[0, self.focus], out.attentions

    def explained(self, embeds: torch.Tensor, mask: torch.Tensor | None = None):
        """(C,) the numbers attributed: a decoder's one (the predicted token's log-probability), an encoder's
        vector; and the attentions."""
        values, attentions = self.outputs(embeds, mask)
        return (values[[self.predicted]] if self.causal else values), attentions

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) attention x gradient and gradient x input: per output component c, sum over layers and heads of
        A[f, j] * dy_c/dA[f, j], and dy_c/de_j . e_j; then the norm over components, over |h| (encoders)."""
        embeds = self.embeds.clone().requires_grad_(True)
        values, attentions = self.explained(embeds)
        attention_gradient, gradient_input = [], []
        for c in range(values.numel()):
            grads = torch.autograd.grad(values[c], [embeds, *attentions], retain_graph=True)
            gradient_input.append((grads[0][0] * embeds[0]).sum(-1).detach())
            attention_gradient.append(sum((a[0, :, self.focus] * g[0, :, self.focus]).sum(0)
                                          for a, g in zip(attentions, grads[1:])).detach())
        norm = lambda rows: torch.stack(rows).double().norm(dim=0) / self.norm  # noqa: E731
        return norm(attention_gradient), norm(gradient_input)

    def integrated(self, steps: int = 200) -> torch.Tensor:
        """(N,) integrated gradients from the average token (the embedding table's mean direction, at each token's
        own length), by a midpoint Riemann sum, norm over components."""
        mean = self.model.get_input_embeddings().weight.mean(0).detach()
        baseline = mean / mean.norm() * self.embeds[0].norm(dim=-1, keepdim=True)  # (N, E)
        total = None
        for i in range(steps):
            alpha = (i + 0.5) / steps
            point = (baseline + alpha * (self.embeds - baseline)).requires_grad_(True)
            values, _ = self.explained(point)
            rows = torch.stack([torch.autograd.grad(values[c], point, retain_graph=True)[0][0]
                                for c in range(values.numel())])  # (C, N, E)
            total = rows if total is None else total + rows
        assert total is not None
        per_token = (total / steps * (self.embeds[0] - baseline)).sum(-1)  # (C, N)
        assert baseline.shape == self.embeds[0].shape
        return per_token.double().norm(dim=0) / self.norm

    def focus_rows(self) -> torch.Tensor:
        with torch.no_grad():
            _, attentions = self.explained(self.embeds)
        return torch.stack([a[0, :, self.focus] for a in attentions])  # (L, H, N)


def run(name: str, model, ids, rows: torch.Tensor, rolled: torch.Tensor | None = None, **options):
    focus = focus_of(name)
    causal = name == "llama"
    # the rollout row is passed through as it is (explain computes it; tested there)
    rolled = torch.zeros(N) if rolled is None else rolled
    options = {"directions": DIM, "steps": 64, **options}  # K = D: the encoder's directions are exact
    return attribute(model, ids, focus=focus, causal=causal, focus_rows=rows, rollout_row=rolled,
                     special=[False] * N, decode=lambda i: f"<{i}>", **options)


def test_gradient_methods_equal_an_independent_computation(pair):
    name, reference_model, model, ids = pair
    reference = Reference(name, reference_model, ids)
    rows = reference.focus_rows()
    result = run(name, model, ids, rows)
    attention_gradient, gradient_input = reference.gradients()
    scored = result.scored
    assert scored == [t for t in range(reference.focus + 1 if reference.causal else N) if t != reference.focus]
    torch.testing.assert_close(result.scores[GRADIENT_INPUT][scored], gradient_input[scored], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(result.scores[ATTENTION_GRADIENT][scored], attention_gradient[scored],
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(result.scores[MEAN], rows.double().mean(1).mean(0) * _kept(scored))
    torch.testing.assert_close(result.scores[LAST], rows.double()[-1].mean(0) * _kept(scored))
    assert result.directions == (1 if reference.causal else DIM)


def _kept(scored: list[int]) -> torch.Tensor:
    keep = torch.zeros(N, dtype=torch.float64)
    keep[scored] = 1.0
    return keep


def test_integrated_gradients_equal_a_riemann_sum(pair):
    name, reference_model, model, ids = pair
    reference = Reference(name, reference_model, ids)
    result = run(name, model, ids, reference.focus_rows(), steps=128)
    expected = reference.integrated()
    scored = result.scored
    atol = 1e-3 * float(expected.max())  # two quadratures of one integral: they differ in the small entries
    torch.testing.assert_close(result.scores[INTEGRATED][scored], expected[scored], rtol=2e-3, atol=atol)
    assert result.completeness < 0.01


def test_integrated_gradients_refine_their_steps_until_complete(decoder):
    name, reference_model, model, ids = decoder
    result = run(name, model, ids, Reference(name, reference_model, ids).focus_rows(), steps=1)
    assert result.steps in (1, 2, 4, 8)
    if result.completeness > GAP:  # still rough after every doubling: said so
        assert result.steps == 8 and "completeness gap is still" in result.notes[0]
    else:
        assert not result.notes
    assert result.steps > 1, "one step cannot be complete on this model"


def test_ablation_equals_rerunning_without_the_token(pair):
    name, reference_model, model, ids = pair
    reference = Reference(name, reference_model, ids)
    result = run(name, model, ids, reference.focus_rows())
    with torch.no_grad():
        whole, _ = reference.explained(reference.embeds)
        for t in result.scored:
            if reference.causal:  # a decoder without token t: the focus moves one place left, positions close up
                kept = [i for i in range(N) if i != t]
                shorter = Reference.__new__(Reference)
                shorter.__dict__.update(reference.__dict__, focus=reference.focus - 1)
                values, _ = shorter.explained(reference.embeds[:, kept])
                expected = float((values - whole).abs()[0])
            else:  # an encoder: token t hidden from every attention call, its position kept
                mask = torch.ones(1, N, dtype=torch.long)
                mask[0, t] = 0
                values, _ = reference.explained(reference.embeds, mask)
                expected = float((values - whole).norm()) / reference.norm
            assert math.isclose(float(result.ablation[t]), expected, rel_tol=1e-4, abs_tol=1e-6), t
    unscored = [t for t in range(N) if t not in result.scored]
    assert all(float(result.ablation[t]) == 0.0 for t in unscored)


def test_correlations_are_spearmans_and_reproducible(pair):
    name, reference_model, model, ids = pair
    rows = Reference(name, reference_model, ids).focus_rows()
    first = run(name, model, ids, rows, directions=8)  # an encoder's 8 random directions of 32: seeded
    again = run(name, model, ids, rows, directions=8)
    assert first.correlations == again.correlations
    index = torch.tensor(first.scored)
    for method, values in first.scores.items():
        expected = scipy_stats.spearmanr(values[index].numpy(), first.ablation[index].numpy()).statistic
        assert (math.isnan(expected) and math.isnan(first.correlations[method])) or \
            math.isclose(first.correlations[method], expected, abs_tol=1e-12), method
    assert list(first.scores) == list(METHODS)
    for layer, rho in enumerate(first.layer_correlations):
        expected = scipy_stats.spearmanr(rows[layer].double().mean(0)[index].numpy(),
                                         first.ablation[index].numpy()).statistic
        assert math.isclose(rho, expected, abs_tol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_spearman_equals_scipy_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 4, (11,), generator=generator).double()  # many ties
    b = torch.randn(11, generator=generator, dtype=torch.float64)
    assert math.isclose(spearman(a, b), scipy_stats.spearmanr(a.numpy(), b.numpy()).statistic, abs_tol=1e-12)
    torch.testing.assert_close(ranks(a), torch.from_numpy(scipy_stats.rankdata(a.numpy())).double())


def test_spearman_is_undefined_where_it_should_be():
    assert math.isnan(spearman(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])))
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    assert spearman(torch.arange(5.0), torch.arange(5.0) ** 3) == pytest.approx(1.0)
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        spearman(torch.ones(3), torch.ones(4))


@pytest.fixture(scope="module")
def minilm():
    return hub.load("sentence-transformers/all-MiniLM-L6-v2")


def test_explain_with_attribution_on_the_bundled_encoder(minilm):
    e = explain("The animal didn't cross the street because it was too tired", minilm, attribution=True,
                steps=16)
    a = e.attributions
    assert a is not None
    assert a.scored == [t for t in range(len(e.tokens)) if t != e.focus]
    torch.testing.assert_close(a.scores[ROLLOUT][a.scored], e.rollout_row.double()[a.scored])
    assert set(a.content_correlations) == set(METHODS)  # [CLS] and [SEP] are scored: the table has both columns
    summary = e.summary()
    assert "Attention vs attribution for 'it'" in summary
    for method in (*METHODS, ABLATION):
        assert method in summary
    assert "rho, no special tokens" in summary
    strongest = max(a.scored, key=lambda t: float(a.ablation[t]))
    assert f"Masking {e.tokens[strongest]!r}" in summary


def test_explain_without_attribution_has_none(minilm):
    e = explain("Attention is all you need.", minilm)
    assert e.attributions is None and "Attention vs attribution" not in e.summary()


def test_a_decoder_focus_scores_only_earlier_tokens(decoder):
    name, _, model, ids = decoder
    rows = torch.softmax(torch.randn(2, 4, N, generator=torch.Generator().manual_seed(0)), -1)
    rows[..., focus_of(name) + 1:] = 0.0
    rolled = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    given = rolled.clone()
    result = run(name, model, ids, rows, rolled)
    assert torch.equal(rolled, given), "the caller's rollout row was changed"
    torch.testing.assert_close(result.scores[ROLLOUT][:focus_of(name)], given[:focus_of(name)])
    later = list(range(focus_of(name), N))  # the focus and after: not scored, all zero
    for values in [*result.scores.values(), result.ablation]:
        assert torch.all(values[later] == 0)
    assert result.target.startswith("log p('<")
