"""Are sixteen heads really better than one? Prune the least important heads of a small GPT (Michel et al.
2019) and compare with pruning as many random heads.

The task needs attention: each sequence lists (key, value) pair tokens, then asks for the values of some
of its keys; the answer must be copied from wherever the key appeared. A 2-layer GPT with 8 heads per layer
learns it with Adam; head importance (mean |∂L/∂ξ_h| over validation batches, normalized per layer) is
computed once, then the k least important heads (or k random ones, several seeds) are removed and the
accuracy on held-out sequences is measured again. Importance is not recomputed after each pruning step
(the paper's iterative variant would do that).

    python examples/prune_heads.py            # about a minute on 2 CPU cores (mostly training)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnkit.inspect import attention_layers, head_importance, prune_heads
from attnkit.models.gpt import GPT, AttentionConfig, FeedForwardConfig, GPTConfig


@dataclass(frozen=True)
class Task:
    """Key-value retrieval. A sequence holds ``pairs`` tokens, each a (key, value) pair with a distinct key,
    a separator, then ``queries`` of those keys, each followed by its value: "(k3,v5) (k0,v2) ... | k0 v2 k3 v5".
    The value after a query can only come from the pair token with the same key, wherever it is."""

    keys: int = 12
    values: int = 8
    pairs: int = 8
    queries: int = 4

    @property
    def vocab_size(self) -> int:  # pair tokens, query keys, answer values, the separator
        return self.keys * self.values + self.keys + self.values + 1

    @property
    def length(self) -> int:
        return self.pairs + 1 + 2 * self.queries

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, L-1) and next-token targets (B, L-1), -100 everywhere but at the answers."""
        k, v = self.keys, self.values
        keys = torch.rand(size, k, generator=generator).argsort(-1)[:, : self.pairs]  # (B, P), distinct
        values = torch.randint(0, v, (size, self.pairs), generator=generator)  # (B, P)
        asked = torch.rand(size, self.pairs, generator=generator).argsort(-1)[:, : self.queries]  # (B, Q)
        questions = torch.stack((k * v + keys.gather(1, asked), k * v + k + values.gather(1, asked)), dim=-1)
        separator = torch.full((size, 1), self.vocab_size - 1)
        ids = torch.cat((keys * v + values, separator, questions.flatten(1)), dim=1)  # (B, L)
        targets = ids[:, 1:].clone()
        is_answer = torch.zeros_like(targets, dtype=torch.bool)
        is_answer[:, self.pairs + 1::2] = True  # the positions holding a queried key predict its value
        return ids[:, :-1], targets.masked_fill(~is_answer, -100)


def loss_fn(model: GPT, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    logits = model(inputs).logits  # (B, L-1, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@torch.no_grad()
def accuracy(model: GPT, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of queried values predicted exactly (argmax)."""
    inputs, targets = batch
    answered = targets != -100
    predicted = model(inputs).logits.argmax(-1)
    return (predicted[answered] == targets[answered]).float().mean().item()


def train(task: Task, steps: int, batch_size: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=task.vocab_size, max_seq_len=task.length, dim=64, num_layers=2,
                       attention=AttentionConfig(num_heads=8), ffn=FeedForwardConfig(hidden=128), tie_embeddings=False)
    model = GPT(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        loss = loss_fn(model, task.batch(batch_size, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % (steps // 5) == 0:
            print(f"  step {step:5d}/{steps}  loss {loss.item():.4f}", flush=True)
    return model.eval()


def first_heads(ranking: list[tuple[int, int]], heads_per_layer: list[int], k: int) -> dict[int, list[int]]:
    """The first ``k`` heads of ``ranking`` (layer, head), skipping any that would empty its layer."""
    left, chosen = list(heads_per_layer), {}
    for layer, head in ranking:
        if k == 0:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer], k = left[layer] - 1, k - 1
    return chosen


def pruned_accuracy(model: GPT, heads: dict[int, list[int]], test: tuple) -> tuple[float, int]:
    pruned = prune_heads(copy.deepcopy(model), heads)
    return accuracy(pruned, test), pruned.num_parameters()


def random_accuracies(model: GPT, every_head: list[tuple[int, int]], heads_per_layer: list[int], k: int,
                      test: tuple, seeds: int) -> list[float]:
    """Accuracy after pruning ``k`` random heads, once per seed."""
    accuracies = []
    for s in range(seeds):
        order = torch.randperm(len(every_head), generator=torch.Generator().manual_seed(100 + s)).tolist()
        heads = first_heads([every_head[i] for i in order], heads_per_layer, k)
        accuracies.append(pruned_accuracy(model, heads, test)[0])
    return accuracies


def main(steps: int = 800, batch_size: int = 64, random_seeds: int = 5, seed: int = 0,
         test_size: int = 4000) -> None:
    start = time.perf_counter()
    task = Task()
    print(f"[1/4] training a 2-layer GPT with 8 heads per layer on key-value retrieval ({steps} Adam steps)",
          flush=True)
    model = train(task, steps, batch_size, seed)
    test = task.batch(test_size, torch.Generator().manual_seed(seed + 1))
    validation = [task.batch(256, torch.Generator().manual_seed(seed + 2 + i)) for i in range(8)]
    print(f"[2/4] held-out accuracy {accuracy(model, test):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    print("[3/4] head importance on 8 validation batches (normalized per layer)", flush=True)
    scores = head_importance(model, validation, loss_fn)  # (layers, max heads)
    for layer, row in enumerate(scores):
        print(f"  layer {layer}: " + " ".join(f"{s:.3f}" for s in row.tolist()), flush=True)
    heads_per_layer = [m.num_heads for _, m in attention_layers(model)]
    every_head = [(layer, h) for layer, n in enumerate(heads_per_layer) for h in range(n)]
    by_importance = sorted(every_head, key=lambda lh: scores[lh].item())

    print(f"[4/4] pruning k of {len(every_head)} heads: least important first vs random ({random_seeds} seeds)",
          flush=True)
    print(f"\n{'heads pruned':>12}  {'acc (importance)':>16}  {'acc (random) mean [min, max]':>29}  {'parameters':>10}")
    for k in range(0, len(every_head) - len(heads_per_layer) + 1, 2):
        acc, params = pruned_accuracy(model, first_heads(by_importance, heads_per_layer, k), test)
        randoms = random_accuracies(model, every_head, heads_per_layer, k, test, random_seeds)
        spread = f"{sum(randoms) / len(randoms):.4f} [{min(randoms):.4f}, {max(randoms):.4f}]"
        print(f"{k:>12}  {acc:>16.4f}  {spread:>29}  {params:>10,}", flush=True)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
