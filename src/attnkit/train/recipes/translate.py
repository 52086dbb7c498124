"""``translate``: Bahdanau, Cho & Bengio 2014 on a real language pair: numbers written in digits -> the same
number in French words, as ``num2words`` writes it (4317 -> "quatre mille trois cent dix-sept"; 97 ->
"quatre-vingt-dix-sept", where two digits become four words and the order is not the digits' order).

Three models of similar size learn it from the same examples: the GRU encoder-decoder *without* attention
(one fixed vector for the whole source, Cho et al. 2014), the same network *with* additive attention
(``RNNSeq2Seq``), and the Transformer. The paper's Figure 2 is the claim measured: without attention, quality
falls as the source grows. Exact-match accuracy by source length, and the learned alignments as figures.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.rnn import RNNSeq2Seq, RNNSeq2SeqConfig
from ...models.transformer import Transformer, TransformerConfig
from ..config import TrainConfig
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]
LANGUAGE = "fr"


@dataclass(frozen=True)
class Sizes:
    digits: int  # sources have 1..digits digits; 3..digits equally many of each length
    train: int  # training examples
    test: int  # test examples per source length
    steps: int
    batch: int
    dim: int  # embedding size; the GRUs' hidden size and the Transformer's width are 2 * dim


FULL = Sizes(digits=12, train=40_000, test=100, steps=800, batch=64, dim=64)
QUICK = Sizes(digits=4, train=600, test=8, steps=12, batch=16, dim=16)


def words(number: int) -> list[str]:
    """The French words of ``number``, hyphens kept as their own tokens ("dix-sept" -> dix, -, sept)."""
    from num2words import num2words  # the text generator (an optional dependency: the train extra)

    return re.findall(r"[^\s-]+|-", num2words(number, lang=LANGUAGE))


@dataclass
class Data:
    src_vocab: list[str]
    tgt_vocab: list[str]
    train_src: Tensor  # (N, S) digit ids, padded with PAD
    train_tgt: Tensor  # (N, T) word ids then EOS, padded with PAD
    test: dict[int, tuple[Tensor, Tensor, list[int]]]  # source length -> (src, tgt, numbers)


def _available(digits: int) -> int:
    return 10 if digits == 1 else 9 * 10 ** (digits - 1)


def _numbers(rng: random.Random, digits: int, count: int, exclude: set[int]) -> list[int]:
    """``count`` distinct numbers of ``digits`` digits that are not in ``exclude`` (which grows by them)."""
    picked: list[int] = []
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    while len(picked) < count:
        n = rng.randint(low, high)
        if n not in exclude:
            exclude.add(n)
            picked.append(n)
    return picked


def _encode(numbers: list[int], tgt_index: dict[str, int]) -> tuple[Tensor, Tensor]:
    sources = [[3 + int(d) for d in str(n)] for n in numbers]
    targets = [[tgt_index[w] for w in words(n)] + [EOS] for n in numbers]
    src = torch.full((len(numbers), max(map(len, sources))), PAD)
    tgt = torch.full((len(numbers), max(map(len, targets))), PAD)
    for i, (s, t) in enumerate(zip(sources, targets)):
        src[i, :len(s)] = torch.tensor(s)
        tgt[i, :len(t)] = torch.tensor(t)
    return src, tgt


def make_data(sizes: Sizes, seed: int) -> Data:
    """Every number below 100 is training data: those are the vocabulary ("dix-sept", "quatre-vingt-dix"), which
    no model can guess. Test numbers of 3 to ``sizes.digits`` digits are drawn first, so the training set (an
    equal share of each length) never holds one."""
    rng = random.Random(seed)
    seen: set[int] = set(range(100))
    lengths = range(3, sizes.digits + 1)
    test_numbers = {d: _numbers(rng, d, min(sizes.test, _available(d) // 2), seen) for d in lengths}
    per_length = (sizes.train - 100) // len(lengths)
    train_numbers = list(range(100)) + [n for d in lengths for n in
                                        _numbers(rng, d, min(per_length, _available(d) - len(test_numbers[d])), seen)]
    vocab = sorted({w for n in [*train_numbers, *sum(test_numbers.values(), [])] for w in words(n)})
    index = {w: i for i, w in enumerate(SPECIALS + vocab)}
    train_src, train_tgt = _encode(train_numbers, index)
    test = {d: (*_encode(ns, index), ns) for d, ns in test_numbers.items()}
    return Data(SPECIALS + [str(d) for d in range(10)], SPECIALS + vocab, train_src, train_tgt, test)


def _trim(x: Tensor) -> Tensor:
    """Drop the columns that are padding in every row."""
    used = int((x != PAD).any(dim=0).nonzero().max()) + 1 if bool((x != PAD).any()) else 1
    return x[:, :used]


def build_models(data: Data, dim: int) -> dict[str, nn.Module]:
    s, t = len(data.src_vocab), len(data.tgt_vocab)
    rnn = {"src_vocab_size": s, "tgt_vocab_size": t, "embed_dim": dim, "hidden": 2 * dim, "attn_dim": 2 * dim}
    transformer = TransformerConfig(src_vocab_size=s, tgt_vocab_size=t, dim=2 * dim, num_heads=4, hidden=4 * dim,
                                    num_encoder_layers=2, num_decoder_layers=2)
    return {"gru": RNNSeq2Seq(RNNSeq2SeqConfig(**rnn, context="fixed")),
            "gru-attention": RNNSeq2Seq(RNNSeq2SeqConfig(**rnn, context="attention")),
            "transformer": Transformer(transformer)}


def _logits(model: nn.Module, src: Tensor, tgt: Tensor, transformer: bool) -> Tensor:
    if transformer:  # the decoder reads BOS then the targets, shifted right
        inputs = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
        return model(src, inputs).logits
    return model(src, tgt).logits


def _loss(transformer: bool):  # type: ignore[no-untyped-def]
    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Loss:
        src, tgt = batch
        logits = _logits(model, src, tgt, transformer)  # (B, T, V)
        total = F.cross_entropy(logits.transpose(1, 2).float(), tgt, ignore_index=PAD, reduction="sum")
        return Loss(total, int((tgt != PAD).sum()))
    return loss


@torch.no_grad()
def decode(model: nn.Module, src: Tensor, max_len: int) -> Tensor:
    """Greedy tokens (B, T) without BOS, PAD after EOS."""
    if isinstance(model, Transformer):
        return model.greedy_decode(src, max_len=max_len)[:, 1:]
    assert isinstance(model, RNNSeq2Seq)
    return model.greedy_decode(src, max_len)[0]


def exact(predicted: Tensor, target: Tensor) -> Tensor:
    """(B,) bool: the prediction equals the target up to and including its EOS."""
    width = max(predicted.shape[1], target.shape[1])
    p = F.pad(predicted, (0, width - predicted.shape[1]), value=PAD)
    t = F.pad(target, (0, width - target.shape[1]), value=PAD)
    after_eos = (t == EOS).long().cumsum(dim=1) - (t == EOS).long() > 0  # positions past the target's EOS
    return ((p == t) | after_eos).all(dim=1)


def accuracy_by_length(model: nn.Module, data: Data) -> dict[int, float]:
    model.eval()
    result = {}
    for length, (src, tgt, _) in data.test.items():
        result[length] = float(exact(decode(model, src, tgt.shape[1] + 2), tgt).float().mean())
    return result


def _task(name: str, model: nn.Module, data: Data) -> Task:
    transformer = isinstance(model, Transformer)

    def batch(indices: Tensor) -> tuple[Tensor, Tensor]:
        return _trim(data.train_src[indices]), _trim(data.train_tgt[indices])

    def evaluate(model: nn.Module) -> dict[str, float]:
        accuracy = accuracy_by_length(model, data)
        return {"accuracy": sum(accuracy.values()) / len(accuracy),
                **{f"accuracy_len{d}": a for d, a in accuracy.items()}}

    return Task(model, size=len(data.train_src), batch=batch, loss=_loss(transformer), evaluate=evaluate,
                unit="tokens", items=lambda b: int((b[1] != PAD).sum()))


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    data = make_data(sizes, options.seed)
    config = train_config(options, options.steps or sizes.steps, batch_size=sizes.batch, lr=3e-3, warmup=30,
                      min_lr=0.05, grad_clip=1.0)
    seed_everything(options.seed)
    models = build_models(data, sizes.dim)
    accuracy: dict[str, dict[int, float]] = {}
    parameters: dict[str, int] = {}
    for name, model in models.items():
        result = fit_part(options, name, _task(name, model, data), config)
        parameters[name] = sum(p.numel() for p in model.parameters())
        accuracy[name] = {int(k.removeprefix("accuracy_len")): v for k, v in result.evaluation.items()
                          if k.startswith("accuracy_len")}
    if not main_process():
        return None
    figures = _figures(options.out, models, data, accuracy)
    return _report(sizes, config, data, accuracy, parameters, figures)


def _report(sizes: Sizes, config: TrainConfig, data: Data, accuracy: dict[str, dict[int, float]],
            parameters: dict[str, int], figures: list[Path]) -> Report:
    names = list(accuracy)
    lengths = sorted(data.test)
    rows: list[list[Any]] = [[f"{d} digit{'s' if d > 1 else ''}", *[accuracy[n][d] for n in names]] for d in lengths]
    rows.append(["all", *[sum(accuracy[n].values()) / len(lengths) for n in names]])
    rows.append(["parameters", *[parameters[n] for n in names]])
    title = (f"translate: digits -> French words, exact-match accuracy on {sum(len(t[2]) for t in data.test.values())} "
             f"held-out numbers by source length ({config.steps} steps of {config.batch_size}, "
             f"{len(data.train_src)} training numbers)")
    return Report(title, ["source length", *names], rows,
                  {"accuracy": {n: {str(d): a for d, a in accuracy[n].items()} for n in names},
                   "parameters": parameters, "sizes": sizes.__dict__, "config": config.to_dict()},
                  figures)


def _figures(out: Path, models: dict[str, nn.Module], data: Data, accuracy: dict[str, dict[int, float]]) -> list[Path]:
    from ...inspect import view
    from .figures import alignment_grid, lines  # matplotlib, only when drawing

    paths = [lines(out / "accuracy_by_length.png", {n: sorted(a.items()) for n, a in accuracy.items()},
                   xlabel="source length (digits)", ylabel="exact-match accuracy",
                   title="Without attention, accuracy falls as the source grows")]
    model = models["gru-attention"]
    assert isinstance(model, RNNSeq2Seq)
    longest = max(data.test)
    src, _, numbers = data.test[longest]
    maps = []
    for i in range(min(3, len(numbers))):
        tokens, weights = model.greedy_decode(src[i:i + 1], 40)
        out_words = [data.tgt_vocab[t] for t in tokens[0].tolist()]
        maps.append((weights[0], list(str(numbers[i])), out_words))
    paths.append(alignment_grid(out / "alignment.png", maps, title="Additive attention: learned alignments"))
    weights, digits, out_words = maps[0]  # the interactive page of the first: a cross-attention view
    page = view(weights[None, :len(out_words), :len(digits)], query_tokens=out_words, key_tokens=digits,
                title=f"{''.join(digits)} -> French: additive attention's alignment")
    paths.append(page.save(out / "alignment.html"))
    return paths


RECIPE = Recipe("translate", "Bahdanau et al. 2014: digits -> French words; GRU vs GRU + attention vs Transformer "
                "by source length", run)
