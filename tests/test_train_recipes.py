"""The recipes glimpse (hard attention by REINFORCE) and han (hierarchical attention): their parts that can fail,
and each one's --quick run through the command line."""

import json
import os
import signal

import pytest
import torch

from attnkit.cli import main
from attnkit.models.han import HANOutput
from attnkit.train import TrainConfig, fit
from attnkit.train.recipes.glimpse import GlimpseNet, make_task, patches, reinforce
from attnkit.train.recipes.vit_digits import make_data as make_digits
from attnkit.train.recipes.han import QUICK, Documents, chance, docstring_sentences, make_data, measure, top_hits


def _quick(name, out, capsys, *extra):
    assert main(["train", name, "--quick", "--out", str(out), "--no-progress", *extra]) == 0
    return capsys.readouterr().out, json.loads((out / "results.json").read_text())


def _is_png(path):
    return path.read_bytes()[:4] == b"\x89PNG"


# --- glimpse -----------------------------------------------------------------------------------------------

def test_patches_are_row_major_over_the_grid_and_within_each_patch():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    p = patches(x, 2)  # (1, 16, 4)
    assert p.shape == (1, 16, 4)
    assert p[0, 0].tolist() == [0, 1, 8, 9]
    assert p[0, 1].tolist() == [2, 3, 10, 11]  # the next patch to the right
    assert p[0, 4].tolist() == [16, 17, 24, 25]  # the first patch of the second row


def test_reinforce_raises_the_probability_of_rewarded_glimpses_and_lowers_the_others():
    logits = torch.zeros(4, requires_grad=True)
    action = 2

    def gradient(reward, baseline):
        logits.grad = None
        log_prob = torch.log_softmax(logits, -1)[action].reshape(1, 1)  # (B=1, k=1)
        surrogate, _ = reinforce(log_prob, torch.tensor([[baseline]]), torch.tensor([reward]))
        surrogate.backward()
        return logits.grad.clone()

    better = gradient(1.0, 0.25)  # better than expected: descending the surrogate raises the action's logit
    assert better[action] < 0 and all(better[i] > 0 for i in (0, 1, 3))
    assert better[action].item() == pytest.approx(-0.75 * (1 - 0.25))  # -(R - b) * (1 - p)
    worse = gradient(0.0, 0.25)  # worse than expected: lowers it
    assert worse[action] > 0
    assert gradient(0.5, 0.5).abs().max() == 0  # as expected: no push


def test_reinforce_baseline_loss_regresses_on_the_reward_and_the_policy_term_leaves_it():
    baseline = torch.tensor([[0.2, 0.9]], requires_grad=True)
    log_prob = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    surrogate, regression = reinforce(log_prob, baseline, torch.tensor([1.0]))
    assert regression.item() == pytest.approx(0.8 ** 2 + 0.1 ** 2)
    (surrogate + regression).backward()
    torch.testing.assert_close(baseline.grad, torch.tensor([[-1.6, -0.2]]))  # 2 (b - R): the squared error's only
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.8, -0.1]]))  # -(R - b), b detached


def test_reinforce_learns_a_bandit():
    """Four arms, reward 1 for arm 1 only: REINFORCE with a running baseline finds it."""
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    baseline = torch.zeros(1, 1, requires_grad=True)
    optimizer = torch.optim.SGD([logits, baseline], lr=0.5)
    for _ in range(200):
        arms = torch.multinomial(torch.softmax(logits.detach(), -1), 16, replacement=True)  # (16,)
        log_prob = torch.log_softmax(logits, -1)[arms][:, None]  # (B, 1)
        surrogate, regression = reinforce(log_prob, baseline.expand(16, 1), (arms == 1).float())
        optimizer.zero_grad()
        ((surrogate + regression) / 16).backward()
        optimizer.step()
    assert torch.softmax(logits, -1)[1] > 0.9


def _digits(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_hard_glimpses_are_distinct_patches_with_log_probs_and_baselines():
    torch.manual_seed(0)
    model = GlimpseNet("hard", dim=8, glimpses=5, patch=2)
    out = model(_digits())
    assert out.index.shape == (6, 5) and out.log_prob.shape == (6, 5) and out.baseline.shape == (6, 5)
    assert all(len(set(row)) == 5 for row in out.index.tolist())  # without replacement
    assert (out.log_prob <= 0).all() and out.log_prob.requires_grad
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(6, 5))
    greedy = model(_digits(), greedy=True)
    assert greedy.log_prob is None and torch.equal(greedy.index, model(_digits(), greedy=True).index)


def test_a_hard_reader_sees_only_its_glimpses():
    """Changing every pixel outside the chosen patches changes nothing; changing one inside does."""
    torch.manual_seed(0)
    model = GlimpseNet("hard", dim=8, glimpses=3, patch=2).eval()
    x = _digits(1)
    out = model(x, greedy=True)
    seen = torch.zeros(16, dtype=torch.bool)
    seen[out.index[0]] = True
    pixel_seen = seen.reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)  # (8, 8)
    elsewhere = torch.where(pixel_seen, x, 1 - x)
    torch.testing.assert_close(model(elsewhere, greedy=True).logits, out.logits, rtol=0, atol=0)
    inside = x.clone()
    inside[0, 0][pixel_seen] = 1 - inside[0, 0][pixel_seen]
    assert not torch.equal(model(inside, greedy=True).logits, out.logits)


def test_random_and_soft_readings():
    torch.manual_seed(0)
    random_reader, soft = GlimpseNet("random", dim=8, glimpses=4, patch=2), GlimpseNet("soft", dim=8, glimpses=4,
                                                                                      patch=2)
    assert random_reader.policy is None and random_reader.baseline is None  # nothing unused (DDP)
    a = random_reader(_digits(), generator=torch.Generator().manual_seed(1))
    b = random_reader(_digits(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.index, b.index) and a.log_prob is None and all(len(set(r)) == 4 for r in a.index.tolist())
    greedy = [random_reader(_digits(), greedy=True, generator=torch.Generator().manual_seed(s)).index for s in (1, 2)]
    assert not torch.equal(greedy[0], greedy[1])  # random glimpses stay random when evaluated "greedily"
    out = soft(_digits())
    assert (out.index == -1).all() and out.log_prob is None and out.baseline is None
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(6, 4))
    assert (out.weights > 0).all()  # every patch, every step
    with pytest.raises(ValueError, match="glimpses must be in 1..16"):
        GlimpseNet("hard", dim=8, glimpses=17, patch=2)


def test_hard_glimpse_training_resumes_bitwise_after_an_interruption(tmp_path):
    """The policy samples from torch's global RNG, which the checkpoint keeps: stop at step 3, resume, and the
    weights equal those of a run never stopped."""
    data = make_digits(0)
    config = TrainConfig(steps=6, batch_size=16, lr=3e-3, seed=0)

    def task():
        torch.manual_seed(0)
        return make_task(GlimpseNet("hard", dim=8, glimpses=3, patch=2), data, seed=0)

    whole = task()
    fit(whole, config, tmp_path / "whole", progress=False)
    part = task()
    inner, calls = part.loss, []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return inner(model, batch)
    part.loss = loss
    assert fit(part, config, tmp_path / "part", progress=False).interrupted
    resumed = task()
    torch.manual_seed(123)  # another global RNG state: the checkpoint's must win
    fit(resumed, config, tmp_path / "part", resume=True, progress=False)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_glimpse_quick_prints_its_table_and_writes_results_and_figures(tmp_path, capsys):
    out, results = _quick("glimpse", tmp_path, capsys)
    assert "glimpse: test accuracy on 449 held-out" in out
    for row in ("soft attention over all patches", "hard attention (REINFORCE), greedy", "k random patches"):
        assert row in out
    assert set(results["accuracy"]) == {"hard", "random", "soft"}
    assert all(0 <= a <= 1 for a in results["accuracy"].values())
    assert {"parameters", "glimpses", "patches", "accuracy_hard_sampled", "config"} <= set(results)
    assert results["glimpses"] == 3 and results["patches"] == 16
    assert _is_png(tmp_path / "glimpses.png")
    for part in ("hard", "random", "soft"):
        assert _is_png(tmp_path / part / "loss.png")
    again = tmp_path / "again"  # same seed, same numbers
    assert _quick("glimpse", again, capsys, "--steps", "8")[1]["accuracy"] == results["accuracy"]


# --- han ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def han_data():
    return make_data(QUICK, seed=0)


def test_docstring_sentences_are_real_lowercase_words():
    sentences = docstring_sentences(6)
    assert len(sentences) > 1000 and list(sentences) == sorted(set(sentences))
    assert all(4 <= len(s) <= 6 and all(w.isalpha() and w.islower() for w in s) for s in sentences)
    assert ("return", "the", "square", "root", "of", "x") in sentences  # math.sqrt's docstring


def test_each_document_has_exactly_one_deciding_sentence_with_a_cue_of_its_class(han_data):
    cue_ids = {han_data.vocab.index(w): c for c, words in enumerate(han_data.cues) for w in words}
    for docs in (han_data.train, han_data.test):
        real = (docs.ids != 0).any(-1)  # (N, S)
        counts = real.sum(-1)
        assert counts.min() >= 3 and counts.max() <= QUICK.sentences
        assert torch.equal(real, torch.arange(QUICK.sentences) < counts[:, None])  # sentences from the first
        for d in range(len(docs.label)):
            holding = [s for s in range(QUICK.sentences) if any(int(w) in cue_ids for w in docs.ids[d, s])]
            assert holding == [int(docs.deciding[d])], d
            cue = int(docs.ids[d, docs.deciding[d], docs.cue_position[d]])
            assert cue_ids.get(cue) == int(docs.label[d]) and sum(int(w) in cue_ids for w in docs.ids[d].flatten()) == 1
    assert set(han_data.train.label.tolist()) == set(range(QUICK.classes))


def test_training_and_test_documents_draw_on_disjoint_sentences(han_data):
    def distractors(docs):
        return {tuple(docs.ids[d, s].tolist()) for d in range(len(docs.label))
                for s in range(int((docs.ids[d] != 0).any(-1).sum())) if s != int(docs.deciding[d])}
    assert not distractors(han_data.train) & distractors(han_data.test)


def test_the_data_follow_the_seed(han_data):
    again, other = make_data(QUICK, seed=0), make_data(QUICK, seed=1)
    assert torch.equal(again.train.ids, han_data.train.ids) and again.cues == han_data.cues
    assert other.cues != han_data.cues


def test_top_hits_and_chance_on_a_hand_computed_case():
    weights = torch.tensor([[0.1, 0.7, 0.2, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0]])
    assert top_hits(weights, torch.tensor([1, 1, 0])).tolist() == [True, False, False]  # a tie: the first
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    assert chance(mask) == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)


def test_measure_scores_the_attention_against_the_deciding_sentence_and_cue():
    ids = torch.ones(2, 3, 4, dtype=torch.long)
    ids[0, 2] = 0  # document 0 has two sentences
    ids[1, :, 3] = 0  # document 1's sentences have three words
    docs = Documents(ids, label=torch.tensor([0, 1]), deciding=torch.tensor([1, 0]), cue_position=torch.tensor([2, 0]))

    class Stub(torch.nn.Module):
        def forward(self, input_ids):
            sentences = torch.tensor([[0.2, 0.8, 0.0], [0.1, 0.6, 0.3]])  # a hit, then a miss
            words = torch.full((2, 3, 4), 0.1)
            words[0, 1, 2] = 0.7  # the cue of document 0: a hit
            words[1, 0, 1] = 0.7  # not the cue of document 1: a miss
            return HANOutput(torch.tensor([[2.0, 1.0], [3.0, 1.0]]), words, sentences)

    result = measure(Stub(), docs)
    assert result["accuracy"] == 0.5 and result["sentence_hits"] == 0.5 and result["word_hits"] == 0.5
    assert result["sentence_chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result["word_chance"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert result["deciding_weight"] == pytest.approx((0.8 + 0.1) / 2)


def test_han_quick_prints_its_table_and_writes_results_and_figures(tmp_path, capsys):
    out, results = _quick("han", tmp_path, capsys)
    assert "han: 60 held-out documents" in out and "most-attended sentence = the deciding one" in out
    assert {"accuracy", "sentence_hits", "sentence_chance", "word_hits", "word_chance", "cues", "parameters"} <= set(
        results)
    assert len(results["cues"]) == QUICK.classes and 0 < results["sentence_chance"] < 1
    assert [row[0] for row in results["rows"]][:2] == ["test accuracy", "most-attended sentence = the deciding one"]
    assert _is_png(tmp_path / "attention.png") and _is_png(tmp_path / "han" / "loss.png")
