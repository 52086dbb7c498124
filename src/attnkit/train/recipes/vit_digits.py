"""``vit-digits``: a Vision Transformer (Dosovitskiy et al. 2021) trained from scratch on scikit-learn's bundled
handwritten digits (1 797 images of 8x8 pixels, 10 classes): each image is cut into 2x2 patches, 16 tokens
plus [CLS]. Test accuracy on a held-out quarter, and attention rollout (Abnar & Zuidema 2020) from [CLS] to
the patches, drawn over the images: which strokes the classifier reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...inspect import Capture, capture, rollout
from ...models.vit import ViT, ViTConfig
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config


@dataclass(frozen=True)
class Sizes:
    steps: int
    batch: int
    dim: int
    layers: int
    patch: int


FULL = Sizes(steps=1500, batch=64, dim=64, layers=4, patch=2)
QUICK = Sizes(steps=10, batch=32, dim=16, layers=1, patch=4)


@dataclass
class Data:
    train_x: Tensor  # (N, 1, 8, 8) pixels scaled to [0, 1]
    train_y: Tensor  # (N,) class
    test_x: Tensor
    test_y: Tensor


def make_data(seed: int) -> Data:
    """scikit-learn's digits, split 75/25 with a seeded permutation (the same split for every model)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8); pixels are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = len(y) // 4
    return Data(x[order[test:]], y[order[test:]], x[order[:test]], y[order[:test]])


def _augment(x: Tensor, indices: Tensor) -> Tensor:
    """Shift each image by at most one pixel, a function of the example index (no random state to save)."""
    shifts = torch.stack([indices % 3 - 1, (indices // 3) % 3 - 1], dim=1)  # (B, 2) in {-1, 0, 1}
    padded = F.pad(x, (1, 1, 1, 1))  # (B, 1, 10, 10)
    rows = [padded[i, :, 1 + dy:9 + dy, 1 + dx:9 + dx] for i, (dy, dx) in enumerate(shifts.tolist())]
    return torch.stack(rows)


def make_task(model: ViT, data: Data, augment: bool) -> Task:
    def batch(indices: Tensor) -> tuple[Tensor, Tensor]:
        x = data.train_x[indices]
        return (_augment(x, indices) if augment else x), data.train_y[indices]

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Loss:
        x, y = batch
        return Loss(F.cross_entropy(model(x).logits.float(), y, reduction="sum"), len(y))

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = model(data.test_x).logits  # one forward for both numbers
        return {"accuracy": float((logits.argmax(-1) == data.test_y).float().mean()),
                "loss": float(F.cross_entropy(logits, data.test_y))}

    return Task(model, size=len(data.train_y), batch=batch, loss=loss, evaluate=evaluate)


def attended(model: ViT, x: Tensor) -> tuple[Tensor, Capture]:
    """The logits (B, classes) of ``x`` in eval mode and every layer's attention maps of that forward."""
    model.eval()
    with torch.no_grad(), capture(model) as recorded:
        logits = model(x).logits
    return logits, recorded


def patch_rollout(recorded: Capture, side: int) -> Tensor:
    """(B, side, side): attention rollout from [CLS] to each patch (the [CLS] column dropped, rows renormalized)."""
    flow = rollout([m for m in recorded.maps if m is not None])[:, 0, 1:]  # (B, P): [CLS]'s row, patches only
    flow = flow / flow.sum(-1, keepdim=True)
    return flow.reshape(-1, side, side)


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    data = make_data(options.seed)
    seed_everything(options.seed)
    model = ViT(ViTConfig(image_size=8, patch_size=sizes.patch, channels=1, num_classes=10, dim=sizes.dim,
                          num_layers=sizes.layers, num_heads=4, hidden=2 * sizes.dim, dropout=0.1))
    config = train_config(options, options.steps or sizes.steps, batch_size=sizes.batch, lr=2e-3, warmup=50,
                      weight_decay=0.05, eval_every=None if options.quick else 250)
    result = fit_part(options, "vit", make_task(model, data, augment=True), config)
    if not main_process():
        return None
    figures = [_rollout_figure(options.out / "rollout.png", model, data),
               _page(options.out / "attention.html", model, data)]
    parameters = sum(p.numel() for p in model.parameters())
    rows: list[list[Any]] = [["ViT (from scratch)", result.evaluation["accuracy"], parameters]]
    title = (f"vit-digits: test accuracy on {len(data.test_y)} held-out 8x8 digits ({config.steps} steps of "
             f"{config.batch_size}; {model.config.num_patches} patches of {sizes.patch}x{sizes.patch} + [CLS])")
    return Report(title, ["model", "test accuracy", "parameters"], rows,
                  {"accuracy": result.evaluation["accuracy"], "test_loss": result.evaluation["loss"],
                   "parameters": parameters, "config": config.to_dict(), "sizes": sizes.__dict__}, figures)


def _rollout_figure(path: Path, model: ViT, data: Data) -> Path:
    from .figures import image_grid

    picks = [int((data.test_y == c).nonzero()[0]) for c in range(10)]  # the first test image of each class
    x = data.test_x[picks]
    logits, recorded = attended(model, x)
    flow = patch_rollout(recorded, model.config.image_size // model.config.patch_size)  # (10, side, side)
    overlays = flow.repeat_interleave(model.config.patch_size, -1).repeat_interleave(model.config.patch_size, -2)
    predicted = logits.argmax(-1).tolist()
    captions = [f"{int(y)} -> {p}" for y, p in zip(data.test_y[picks], predicted)]
    return image_grid(path, list(x[:, 0]), list(overlays), captions,
                      title="Attention rollout from [CLS] over the patches (label -> prediction)")


def _page(path: Path, model: ViT, data: Data) -> Path:
    """The interactive page of one test digit: every layer's and head's attention, the keys drawn over the image."""
    from ...inspect import view

    image = data.test_x[:1]  # (1, 1, 8, 8)
    _, recorded = attended(model, image)
    side = model.config.image_size // model.config.patch_size
    title = f"ViT on a test digit ({int(data.test_y[0])}): attention over its {side}x{side} patches"
    page = view(recorded, query_tokens=None, image=image[0, 0], patch_grid=(side, side), prefix_tokens=1, title=title)
    return page.save(path)


RECIPE = Recipe("vit-digits", "Dosovitskiy et al. 2021: a ViT on scikit-learn's 8x8 digits; test accuracy and "
                "attention rollout over the patches", run)
