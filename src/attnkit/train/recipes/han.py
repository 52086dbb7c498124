"""``han``: Yang et al. 2016's hierarchical attention network (word -> sentence -> document,
:class:`attnkit.models.HAN`) on documents where exactly one sentence decides the class, and the paper's
interpretability claim measured: does the most-attended sentence point at the one that decides?

The text is real and offline: sentences of the Python standard library's own docstrings
(``inspect.getdoc`` of a fixed list of stdlib modules and their public members, split at sentence ends,
lower-cased, words of letters only, at most ``words`` per sentence). From their vocabulary, ``classes`` x
``cues`` mid-frequency words are drawn as the cue words of each class, and every sentence holding any cue word
is dropped. A document is 3 to ``sentences`` such sentences (the distractors: real text that says nothing
about the class) and one *deciding* sentence, a docstring sentence with one word replaced by a cue word of the
class, at a random position. Training and test documents are built from disjoint halves of the sentences.

Measured on the test documents: accuracy; how often the sentence with the largest sentence weight is the deciding
one (chance: 1 / the number of sentences, averaged over documents); how often the largest word weight of the
deciding sentence falls on the cue word (chance: 1 / its words). A figure draws a few documents' weights.
High accuracy does not imply the first hit rate: the bidirectional sentence GRU can carry the cue into its
neighbours' states, and the pooling may then attend to one of them (Jain & Wallace 2019's caution).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.han import HAN, HANConfig
from ..config import TrainConfig
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config

PAD = 0
MODULES = ("argparse", "bisect", "calendar", "collections", "csv", "dataclasses", "datetime", "decimal", "difflib",
           "email", "enum", "fractions", "functools", "heapq", "itertools", "json", "logging", "math", "os",
           "pathlib", "queue", "random", "re", "shutil", "socket", "statistics", "string", "subprocess", "tarfile",
           "tempfile", "textwrap", "threading", "typing", "unittest", "zipfile")


@dataclass(frozen=True)
class Sizes:
    train: int  # training documents
    test: int  # test documents
    sentences: int  # at most this many sentences per document (at least 3)
    words: int  # at most this many words per sentence (at least 4)
    classes: int
    cues: int  # cue words per class
    steps: int
    batch: int
    dim: int  # embedding size; the GRUs have dim // 2 per direction


FULL = Sizes(train=8000, test=600, sentences=8, words=10, classes=4, cues=3, steps=1500, batch=32, dim=32)
QUICK = Sizes(train=200, test=60, sentences=4, words=6, classes=3, cues=2, steps=6, batch=16, dim=12)


@functools.lru_cache(maxsize=4)
def docstring_sentences(words: int) -> tuple[tuple[str, ...], ...]:
    """The stdlib docstrings' sentences of 4+ words (cut to ``words``), sorted and without repeats. They are
    this Python's docstrings: another Python version gives other sentences, hence other documents."""
    found: set[tuple[str, ...]] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        with warnings.catch_warnings():  # typing.io and typing.re warn when read
            warnings.simplefilter("ignore", DeprecationWarning)
            docs = [inspect.getdoc(module)] + [inspect.getdoc(getattr(module, m)) for m in sorted(dir(module))
                                               if not m.startswith("_")]
        for doc in docs:
            for sentence in re.split(r"(?<=[.!?])\s+", doc or ""):
                tokens = re.findall(r"[a-z]+", sentence.lower())
                if len(tokens) >= 4:
                    found.add(tuple(tokens[:words]))
    return tuple(sorted(found))


@dataclass
class Documents:
    ids: Tensor  # (N, S, W) word ids, PAD for padding words and sentences
    label: Tensor  # (N,) class
    deciding: Tensor  # (N,) index of the deciding sentence
    cue_position: Tensor  # (N,) position of the cue word in the deciding sentence


@dataclass
class Data:
    vocab: list[str]  # id -> word; 0 is padding
    cues: list[list[str]]  # class -> its cue words
    train: Documents
    test: Documents


def make_documents(pool: list[tuple[str, ...]], cues: list[list[str]], count: int, sizes: Sizes,
                   index: dict[str, int], rng: random.Random) -> Documents:
    """``count`` documents of sentences from ``pool``: each has one deciding sentence (a cue word of its label
    replacing one word) among 2 to ``sizes.sentences - 1`` distractors."""
    ids = torch.full((count, sizes.sentences, sizes.words), PAD)
    label, deciding, position = (torch.zeros(count, dtype=torch.long) for _ in range(3))
    for d in range(count):
        n = rng.randint(3, sizes.sentences)
        chosen = [list(s) for s in rng.sample(pool, n)]
        c, s_decides = rng.randrange(len(cues)), rng.randrange(n)
        w_cue = rng.randrange(len(chosen[s_decides]))
        chosen[s_decides][w_cue] = rng.choice(cues[c])
        label[d], deciding[d], position[d] = c, s_decides, w_cue
        for s, sentence in enumerate(chosen):
            ids[d, s, :len(sentence)] = torch.tensor([index[w] for w in sentence])
    return Documents(ids, label, deciding, position)


def make_data(sizes: Sizes, seed: int) -> Data:
    """Cue words drawn from the words met 5 to 30 times (4+ letters); the other sentences split in two halves,
    one for training documents, one for test documents."""
    rng = random.Random(seed)
    sentences = docstring_sentences(sizes.words)
    counts = Counter(w for s in sentences for w in s)
    candidates = sorted(w for w, c in counts.items() if 5 <= c <= 30 and len(w) >= 4)
    drawn = rng.sample(candidates, sizes.classes * sizes.cues)
    cues = [drawn[c * sizes.cues:(c + 1) * sizes.cues] for c in range(sizes.classes)]
    pool = [s for s in sentences if not set(s) & set(drawn)]
    rng.shuffle(pool)
    vocab = ["<pad>", *sorted({w for s in pool for w in s} | set(drawn))]
    index = {w: i for i, w in enumerate(vocab)}
    half = len(pool) // 2
    return Data(vocab, cues, make_documents(pool[:half], cues, sizes.train, sizes, index, rng),
                make_documents(pool[half:], cues, sizes.test, sizes, index, rng))


def top_hits(weights: Tensor, target: Tensor) -> Tensor:
    """(N,) bool: the largest of ``weights`` (N, L) sits at ``target`` (N,). A tie counts as a hit only when the
    target is the first of the tied largest (argmax's choice)."""
    return weights.argmax(dim=-1) == target


def chance(mask: Tensor) -> float:
    """The hit rate of a uniform random pick among each row's real items: the mean of 1 / count, mask (N, L)."""
    return float((1.0 / mask.sum(-1).float()).mean())


def measure(model: HAN, docs: Documents) -> dict[str, float]:
    """Accuracy, and the attention hit rates against chance (see the module docstring)."""
    out = model(docs.ids)
    rows = torch.arange(len(docs.label))
    decisive_words = out.word_weights[rows, docs.deciding]  # (N, W) word weights of the deciding sentence
    real = docs.ids != PAD  # (N, S, W)
    return {"accuracy": float((out.logits.argmax(-1) == docs.label).float().mean()),
            "sentence_hits": float(top_hits(out.sentence_weights, docs.deciding).float().mean()),
            "sentence_chance": chance(real.any(-1)),
            "word_hits": float(top_hits(decisive_words, docs.cue_position).float().mean()),
            "word_chance": chance(real[rows, docs.deciding]),
            "deciding_weight": float(out.sentence_weights[rows, docs.deciding].mean())}


def make_task(model: HAN, data: Data) -> Task:
    def loss(trained: nn.Module, batch: tuple[Tensor, Tensor]) -> Loss:
        ids, label = batch
        return Loss(F.cross_entropy(trained(ids).logits.float(), label, reduction="sum"), len(label))

    def batch(indices: Tensor) -> tuple[Tensor, Tensor]:
        ids = data.train.ids[indices]
        used = int((ids != PAD).any(-1).any(0).sum())  # sentences are filled from the first: trim the rest
        return ids[:, :max(used, 1)], data.train.label[indices]

    def evaluate(trained: nn.Module) -> dict[str, float]:
        assert isinstance(trained, HAN)
        return measure(trained, data.test)

    return Task(model, size=len(data.train.label), batch=batch, loss=loss, evaluate=evaluate)


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    data = make_data(sizes, options.seed)
    seed_everything(options.seed)
    model = HAN(HANConfig(vocab_size=len(data.vocab), num_classes=sizes.classes, embed_dim=sizes.dim,
                          hidden=sizes.dim // 2, attn_dim=sizes.dim, dropout=0.1))
    config = train_config(options, options.steps or sizes.steps, batch_size=sizes.batch, lr=3e-3, warmup=30,
                      min_lr=0.05, eval_every=None if options.quick else 200)
    result = fit_part(options, "han", make_task(model, data), config)
    if not main_process():
        return None
    model.eval()
    figures = [weights_figure(options.out / "attention.png", model, data)]
    return _report(sizes, config, data, result.evaluation, sum(p.numel() for p in model.parameters()), figures)


def _report(sizes: Sizes, config: TrainConfig, data: Data, e: dict[str, float], parameters: int,
            figures: list[Path]) -> Report:
    rows: list[list[Any]] = [
        ["test accuracy", e["accuracy"], 1 / sizes.classes],
        ["most-attended sentence = the deciding one", e["sentence_hits"], e["sentence_chance"]],
        ["most-attended word of that sentence = the cue", e["word_hits"], e["word_chance"]],
        ["mean sentence weight on the deciding one", e["deciding_weight"], e["sentence_chance"]],
    ]
    title = (f"han: {len(data.test.label)} held-out documents of 3-{sizes.sentences} stdlib-docstring sentences, "
             f"one of which decides among {sizes.classes} classes ({config.steps} steps of {config.batch_size}, "
             f"{len(data.train.label)} training documents, {parameters} parameters)")
    notes = ["cue words per class: " + "; ".join(f"{c}: {', '.join(w)}" for c, w in enumerate(data.cues))]
    return Report(title, ["measure", "HAN", "chance"], rows,
                  {**e, "parameters": parameters, "cues": data.cues, "vocab_size": len(data.vocab),
                   "sizes": sizes.__dict__, "config": config.to_dict()}, figures, notes)


def weights_figure(path: Path, model: HAN, data: Data, documents: int = 3) -> Path:
    """The first test documents: each sentence's words shaded by their word weight, the sentence weight at the
    left (the deciding sentence marked with *)."""
    from ..plots import pyplot, save_figure  # matplotlib, only when drawing

    docs = data.test
    with torch.no_grad():
        out = model(docs.ids[:documents])
    S, W = docs.ids.shape[1:]
    plt = pyplot()
    fig, axes = plt.subplots(documents, 1, figsize=(1.0 * W + 1.5, 0.32 * S * documents + 1), dpi=110, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        real = docs.ids[d] != PAD  # (S, W)
        n = int(real.any(-1).sum())
        ax.imshow(out.word_weights[d, :n].numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for s in range(n):
            for w in range(int(real[s].sum())):
                weight = float(out.word_weights[d, s, w])
                ax.text(w, s, data.vocab[int(docs.ids[d, s, w])], ha="center", va="center", fontsize=6,
                        color="white" if weight > 0.6 else "black")
        ax.set_yticks(range(n), [f"{'*' if s == int(docs.deciding[d]) else ''}{float(out.sentence_weights[d, s]):.2f}"
                                 for s in range(n)], fontsize=7)
        ax.set_xticks([])
        predicted = int(out.logits[d].argmax())
        ax.set_title(f"document {d}: class {int(docs.label[d])}, predicted {predicted}", fontsize=8)
    fig.suptitle("HAN: sentence weight (left; * = the deciding sentence) and word weights (shade)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


RECIPE = Recipe("han", "Yang et al. 2016: hierarchical attention on documents where one stdlib-docstring sentence "
                "decides; accuracy and whether the most-attended sentence is it", run)
