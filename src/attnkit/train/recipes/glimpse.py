"""``glimpse``: hard attention trained by reinforcement learning (Mnih et al. 2014, "Recurrent Models of Visual
Attention"; Xu et al. 2015's hard attention): a classifier of scikit-learn's 8x8 digits that sees only
``k`` of the 16 patches of 2x2 pixels (k = 4: a quarter of the image) and must choose which.

The design, one network read three ways (:class:`GlimpseNet`):

- **Glimpses are sequential and conditioned on what was seen.** A GRU cell holds the state ``h_t`` (``h_0``
  is learned, so the first glimpse is the same distribution for every image). At each of the ``k`` steps a
  linear policy scores the 16 patches from ``h_t``; a patch is chosen among those not yet seen
  (:func:`attnkit.hard_attention`, ``mode="sample"``: a categorical over patches drawn from torch's global RNG,
  which the loop's checkpoints save, so a resumed run stays bitwise); its embedding (its 4 pixels, "what", plus
  its position, "where") updates the state. After ``k`` glimpses a linear layer classifies ``h_k``.
- **Hard (REINFORCE)**: the policy is trained with REINFORCE, reward = 1 when the classification is correct,
  minus a learned baseline ``b_t`` (a linear function of the detached state, regressed on the reward); the
  classifier, the core and the patch embedding are trained by backprop through the chosen glimpses. Evaluated
  greedily (the most probable unseen patch at each step) and, for reference, sampled.
- **Random k**: the same network, glimpses drawn uniformly among the unseen patches; no policy is learned.
- **Soft over all patches**: at each step the policy's softmax over *all 16* patches weighs their embeddings
  (attention pooling with the state as query), trained end to end by backprop; it sees the whole image.

Claim measured: a learned hard policy beats k random patches at the same budget, closing part of the gap to
soft attention, which reads everything. Test accuracy of the three on a held-out quarter, and the glimpses the
policy chose drawn over test digits, numbered in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...functional import hard_attention
from ..config import TrainConfig
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config
from .vit_digits import Data, make_data

Reading = Literal["hard", "random", "soft"]
READINGS: tuple[Reading, ...] = ("hard", "random", "soft")


@dataclass(frozen=True)
class Sizes:
    steps: int
    batch: int
    dim: int  # patch embedding and GRU state size
    glimpses: int  # k: patches seen per image
    patch: int  # side of a square patch, in pixels (8 / patch patches per side)


FULL = Sizes(steps=2500, batch=64, dim=64, glimpses=4, patch=2)
QUICK = Sizes(steps=8, batch=32, dim=16, glimpses=3, patch=2)


def patches(x: Tensor, patch: int) -> Tensor:
    """(B, 1, H, W) images -> (B, P, patch * patch) pixels of each patch, row-major over the patch grid."""
    cols = F.unfold(x, kernel_size=patch, stride=patch)  # (B, patch * patch, P)
    return cols.transpose(1, 2)


@dataclass
class GlimpseOutput:
    """What :meth:`GlimpseNet.forward` returns (k = glimpses, P = patches)."""

    logits: Tensor  # (B, 10) from the state after the k glimpses
    index: Tensor  # (B, k) the patch of each glimpse (-1 for soft reading: it takes every patch)
    weights: Tensor  # (B, k, P) one-hot for hard and random glimpses, the softmax for soft reading
    log_prob: Tensor | None  # (B, k) log-probability of each sampled glimpse (hard reading, sampled)
    baseline: Tensor | None  # (B, k) the predicted reward before each glimpse (hard reading)


class GlimpseNet(nn.Module):
    """A recurrent classifier that reads an image through ``glimpses`` patches, chosen as ``reading`` says
    (see the module docstring). ``forward(x, greedy=False, generator=None)``: x (B, 1, 8, 8) pixels in [0, 1];
    ``greedy`` takes the policy's most probable patch instead of sampling (hard reading); ``generator`` draws the
    random and sampled glimpses (None: torch's global RNG)."""

    def __init__(self, reading: Reading, *, dim: int, glimpses: int, patch: int, image: int = 8) -> None:
        super().__init__()
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        self.reading, self.glimpses, self.patch = reading, glimpses, patch
        self.num_patches = (image // patch) ** 2
        if not 1 <= glimpses <= self.num_patches:
            raise ValueError(f"glimpses must be in 1..{self.num_patches}, got {glimpses}")
        self.what = nn.Linear(patch * patch, dim)
        self.where = nn.Embedding(self.num_patches, dim)
        self.h0 = nn.Parameter(torch.zeros(dim))
        self.core = nn.GRUCell(dim, dim)
        self.classifier = nn.Linear(dim, 10)
        # built only where used: a parameter without gradient would stall DDP
        self.policy = nn.Linear(dim, self.num_patches) if reading != "random" else None
        self.baseline = nn.Linear(dim, 1) if reading == "hard" else None

    def embed(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B, P, dim): each patch's pixels and position."""
        return torch.relu(self.what(patches(x, self.patch)) + self.where.weight)

    def forward(self, x: Tensor, *, greedy: bool = False, generator: torch.Generator | None = None) -> GlimpseOutput:
        features = self.embed(x)  # (B, P, D)
        B, P, _ = features.shape
        h = self.h0.expand(B, -1)  # (B, D)
        unseen = torch.ones(B, 1, P, dtype=torch.bool, device=x.device)
        index, weights, log_probs, baselines = [], [], [], []
        for _ in range(self.glimpses):
            if self.baseline is not None:
                baselines.append(self.baseline(h.detach()).squeeze(-1))  # (B,): the reward expected from here
            scores = self.policy(h)[:, None] if self.policy is not None else x.new_zeros(B, 1, P)  # (B, 1, P)
            if self.reading == "soft":
                w = torch.softmax(scores, dim=-1)  # (B, 1, P)
                glimpse, chosen = (w @ features)[:, 0], torch.full((B,), -1, device=x.device)
            else:
                greedy_here = greedy and self.policy is not None  # random glimpses are drawn, greedy or not
                hard = hard_attention(scores, features, mode="argmax" if greedy_here else "sample", mask=unseen,
                                      generator=generator)
                w, glimpse, chosen = hard.weights, hard.output[:, 0], hard.index[:, 0]
                unseen = unseen & ~w.bool()
                if self.reading == "hard" and hard.log_prob is not None:  # sampled (not greedy) policy glimpses
                    log_probs.append(hard.log_prob[:, 0])
            h = self.core(glimpse, h)
            index.append(chosen)
            weights.append(w[:, 0])
        return GlimpseOutput(self.classifier(h), torch.stack(index, 1), torch.stack(weights, 1),
                             torch.stack(log_probs, 1) if log_probs else None,
                             torch.stack(baselines, 1) if baselines else None)


def reinforce(log_prob: Tensor, baseline: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
    """REINFORCE with a baseline, summed over the batch: (surrogate, baseline loss).

    log_prob (B, k) of the sampled glimpses, baseline (B, k) the predicted reward before each, reward (B,).
    d(surrogate)/d(theta) = -sum_t (R - b_t) d log pi(a_t)/d(theta): descending it raises the probability of
    glimpses that did better than expected. The baseline is regressed on the reward (squared error)."""
    advantage = reward[:, None] - baseline  # (B, k)
    surrogate = -(advantage.detach() * log_prob).sum()
    return surrogate, advantage.pow(2).sum()


def accuracy(model: GlimpseNet, x: Tensor, y: Tensor, *, greedy: bool = True, seed: int = 0, draws: int = 1) -> float:
    """Test accuracy; random and sampled glimpses are drawn from a generator seeded with ``seed``, averaged
    over ``draws`` draws."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hits = [(model(x, greedy=greedy, generator=generator).logits.argmax(-1) == y).float().mean()
                for _ in range(draws)]
    return float(torch.stack(hits).mean())


def make_task(model: GlimpseNet, data: Data, seed: int) -> Task:
    """Classification NLL, plus for the hard reading REINFORCE's surrogate and the baseline's loss."""

    def loss(trained: nn.Module, batch: tuple[Tensor, Tensor]) -> Loss:
        x, y = batch
        out: GlimpseOutput = trained(x)
        total = F.cross_entropy(out.logits.float(), y, reduction="sum")
        if out.log_prob is not None and out.baseline is not None:
            reward = (out.logits.detach().argmax(-1) == y).float()  # (B,) 1 = classified correctly
            surrogate, regression = reinforce(out.log_prob.float(), out.baseline.float(), reward)
            total = total + surrogate + regression
        return Loss(total, len(y))

    def evaluate(trained: nn.Module) -> dict[str, float]:
        assert isinstance(trained, GlimpseNet)
        draws = 5 if trained.reading == "random" else 1  # greedy readings give the same answer every draw
        result = {"accuracy": accuracy(trained, data.test_x, data.test_y, seed=seed, draws=draws)}
        if trained.reading == "hard":
            result["accuracy_sampled"] = accuracy(trained, data.test_x, data.test_y, greedy=False, seed=seed, draws=5)
        return result

    return Task(model, size=len(data.train_y), batch=lambda idx: (data.train_x[idx], data.train_y[idx]), loss=loss,
                evaluate=evaluate)


NAMES: dict[Reading, str] = {"soft": "soft attention over all patches", "hard": "hard attention (REINFORCE)",
                             "random": "k random patches"}


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    data = make_data(options.seed)
    config = train_config(options, options.steps or sizes.steps, batch_size=sizes.batch, lr=3e-3, warmup=50,
                      min_lr=0.05, weight_decay=0.01)
    models: dict[Reading, GlimpseNet] = {}
    evaluation: dict[Reading, dict[str, float]] = {}
    for reading in ("soft", "hard", "random"):
        seed_everything(options.seed)
        models[reading] = GlimpseNet(reading, dim=sizes.dim, glimpses=sizes.glimpses, patch=sizes.patch)
        evaluation[reading] = fit_part(options, reading, make_task(models[reading], data, options.seed),
                                       config).evaluation
    if not main_process():
        return None
    figures = [glimpse_figure(options.out / "glimpses.png", models["hard"], data)]
    return _report(sizes, config, data, models, evaluation, figures)


def _report(sizes: Sizes, config: TrainConfig, data: Data, models: dict[Reading, GlimpseNet],
            evaluation: dict[Reading, dict[str, float]], figures: list[Path]) -> Report:
    count = {r: sum(p.numel() for p in m.parameters()) for r, m in models.items()}
    P, k = models["hard"].num_patches, sizes.glimpses
    rows: list[list[Any]] = [
        [NAMES["soft"], f"all {P}", evaluation["soft"]["accuracy"], count["soft"]],
        [NAMES["hard"] + ", greedy", f"{k} of {P}", evaluation["hard"]["accuracy"], count["hard"]],
        [NAMES["hard"] + ", sampled", f"{k} of {P}", evaluation["hard"]["accuracy_sampled"], count["hard"]],
        [NAMES["random"], f"{k} of {P}", evaluation["random"]["accuracy"], count["random"]],
    ]
    title = (f"glimpse: test accuracy on {len(data.test_y)} held-out 8x8 digits seen through {k} of {P} patches of "
             f"{sizes.patch}x{sizes.patch} ({config.steps} steps of {config.batch_size}; random and sampled "
             "glimpses: mean of 5 draws)")
    results = {"accuracy": {r: evaluation[r]["accuracy"] for r in READINGS},
               "accuracy_hard_sampled": evaluation["hard"]["accuracy_sampled"], "parameters": count,
               "glimpses": k, "patches": P, "sizes": sizes.__dict__, "config": config.to_dict()}
    return Report(title, ["model", "patches seen", "test accuracy", "parameters"], rows, results, figures)


def glimpse_figure(path: Path, model: GlimpseNet, data: Data) -> Path:
    """The first test digit of each class with the policy's greedy glimpses numbered in order, and how often the
    policy looks at each patch over the whole test set."""
    from matplotlib.patches import Rectangle

    from ..plots import pyplot, save_figure  # matplotlib, only when drawing

    picks = [int((data.test_y == c).nonzero()[0]) for c in range(10)]
    with torch.no_grad():
        out = model(data.test_x[picks], greedy=True)
        everywhere = model(data.test_x, greedy=True).weights.sum(1).mean(0)  # (P,) glimpses per patch
    side, p = 8 // model.patch, model.patch
    plt = pyplot()
    fig, axes = plt.subplots(1, 11, figsize=(1.5 * 11, 2.1), dpi=110)
    for ax, i, row, label in zip(axes, picks, out.index.tolist(), out.logits.argmax(-1).tolist()):
        ax.imshow(data.test_x[i, 0].numpy(), cmap="gray_r", interpolation="nearest")
        for order, patch in enumerate(row, 1):
            r, c = divmod(patch, side)
            ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, fill=False, edgecolor="tab:red", linewidth=1.5))
            ax.text(c * p + 0.5 * (p - 1), r * p + 0.5 * (p - 1), str(order), color="tab:red", fontsize=8,
                    ha="center", va="center", fontweight="bold")
        ax.set_title(f"{int(data.test_y[i])} -> {label}", fontsize=7)
        ax.axis("off")
    axes[-1].imshow(everywhere.reshape(side, side).numpy(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    axes[-1].set_title("share of test images\nglimpsing each patch", fontsize=6)
    axes[-1].axis("off")
    fig.suptitle(f"Hard attention (REINFORCE): the {model.glimpses} greedy glimpses, in order (label -> prediction)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


RECIPE = Recipe("glimpse", "Mnih et al. 2014: hard attention trained by REINFORCE sees k of 16 digit patches; vs "
                "k random patches and soft attention over all", run)
