"""A small tokenizer over the Hugging Face ``tokenizers`` library, built from a checkpoint directory's
``tokenizer.json`` — or, without one, from ``vocab.txt`` (BERT WordPiece) or ``vocab.json`` + ``merges.txt``
(GPT-2 byte-level BPE) — with the settings of its ``tokenizer_config.json``. It gives the ids
``transformers.AutoTokenizer`` gives, and batches them into padded tensors.

Truncation: ``max_length`` is the checkpoint's limit — sentence-transformers' ``max_seq_length`` from
``sentence_bert_config.json`` when present (256 for all-MiniLM-L6-v2: what sentence-transformers truncates
to), else ``model_max_length`` from ``tokenizer_config.json``; ``encode`` truncates there unless told otherwise.

    >>> tok = load_tokenizer(resolve("all-MiniLM-L6-v2"))
    >>> ids, mask = tok.encode(["Hello world!", "Hi"])       # (2, 5) each: [CLS] hello world ! [SEP]
    >>> tok.tokens("Hello world!")
    ['[CLS]', 'hello', 'world', '!', '[SEP]']
    >>> tok.decode(ids[0], skip_special_tokens=True)
    'hello world!'

Chat models keep a Jinja chat template in ``config["chat_template"]`` (tokenizer_config.json's, or a GGUF file's
``tokenizer.chat_template``); ``apply_chat_template`` renders a conversation with it as transformers does and
``chat_ids`` gives the ids ``transformers``' ``apply_chat_template(..., tokenize=True)`` gives.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
from torch import Tensor

from ..functional.checks import check_int
from ..files import atomic_path, write_text
from .errors import CheckpointError
from .files import read_json

if TYPE_CHECKING:
    import jinja2

Side = Literal["right", "left"]
_NO_LIMIT = 10 ** 12  # transformers writes int(1e30) for "no limit"
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
_GPT2_SPECIALS = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
_ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                     "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
# Every file load_tokenizer reads (resolve fetches these from the Hub): the model itself (tokenizer.json, or
# vocab.txt, or vocab.json + merges.txt), its settings, and sentence-transformers' truncation limit.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "sentence_bert_config.json")
# the special tokens a checkpoint's tokenizer has when its tokenizer_config.json does not name them
_DEFAULT_SPECIALS = {"bert": _BERT_SPECIALS, "gpt2": _GPT2_SPECIALS, "roberta": _ROBERTA_SPECIALS,
                     "xlm-roberta": _ROBERTA_SPECIALS}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": string, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _from_json(path: Path, config: dict[str, Any]) -> tokenizers.Tokenizer:
    """tokenizer.json, without its baked-in truncation and padding (``encode`` decides those per call), with
    the lower-casing / accent / prefix-space options of tokenizer_config.json applied as transformers does."""
    spec = read_json(path, required=True)
    spec["truncation"], spec["padding"] = None, None
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        for ours, theirs in (("lowercase", "do_lower_case"), ("strip_accents", "strip_accents"),
                             ("handle_chinese_chars", "tokenize_chinese_chars")):
            if theirs in config:
                normalizer[ours] = config[theirs]
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and "add_prefix_space" in config:
        pre["add_prefix_space"] = bool(config["add_prefix_space"])
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def _wordpiece(vocab: Path, config: dict[str, Any], special: dict[str, str]) -> tokenizers.Tokenizer:
    """BERT's WordPiece from vocab.txt, as transformers' BertTokenizer builds it."""
    backend = tokenizers.Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=special["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(list(dict.fromkeys(special.values())))
    cls, sep = special["cls_token"], special["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    return backend


def _with_id(backend: tokenizers.Tokenizer, token: str | None) -> tuple[str, int] | None:
    """(token, its id), or None when there is no such token or the vocabulary lacks it."""
    token_id = None if token is None else backend.token_to_id(token)
    return None if token is None or token_id is None else (token, token_id)


def _byte_level_bpe(vocab: Path, merges: Path, config: dict[str, Any], special: dict[str, str]) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, as transformers' GPT2Tokenizer builds it; with
    RoBERTa's <s> ... </s> around each sequence when the special tokens include a cls_token."""
    bpe = models.BPE.from_file(str(vocab), str(merges), continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False)
    backend = tokenizers.Tokenizer(bpe)
    prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([t for t in dict.fromkeys(special.values()) if backend.token_to_id(t) is not None])
    cls, sep = _with_id(backend, special.get("cls_token")), _with_id(backend, special.get("sep_token"))
    if cls is not None and sep is not None:
        backend.post_processor = processors.RobertaProcessing(
            sep, cls, trim_offsets=bool(config.get("trim_offsets", True)), add_prefix_space=prefix_space)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _built(source: Path, what: str, build: Callable[[], tokenizers.Tokenizer]) -> tokenizers.Tokenizer:
    """``build()``, with the bare exceptions of the ``tokenizers`` library (which name no file) re-raised as a
    CheckpointError naming ``source``."""
    try:
        return build()
    except CheckpointError:
        raise
    except Exception as error:  # tokenizers raises plain Exception ("expected `,` at line 1 column 5")
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(str(source), problems=[f"{what} ({reason})"]) from error


@functools.lru_cache(maxsize=16)
def _compiled_template(source: str) -> jinja2.Template:
    """A chat template compiled in the environment transformers renders chat templates in
    (``utils/chat_template_utils.py``): a sandbox in which the template cannot change its inputs, block tags that
    take their line's indentation and newline with them, ``raise_exception``, ``strftime_now``, a ``tojson`` that
    keeps non-ASCII text, a ``namespace`` without underscore attributes, loop controls, and ``{% generation %}``
    blocks (which mark the assistant's text for training masks and render as their content)."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:  # a dependency of torch, so normally present
        raise ImportError("chat templates need jinja2: pip install jinja2") from error

    class GenerationTag(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
            next(parser.stream)  # the tag's name
            return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))

    class Namespace(jinja2.utils.Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            if name.startswith("_"):  # no way into the interpreter's internals through a namespace
                raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")
            super().__setitem__(name, value)

    def namespace(*args: Any, **kwargs: Any) -> Namespace:
        bad = [name for name in dict(*args, **kwargs) if isinstance(name, str) and name.startswith("_")]
        if bad:
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {bad[0]!r} on a namespace")
        return Namespace(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    class Dict:  # dict(...) and dict.fromkeys(...), and nothing else of the dict type
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=Dict())
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"the chat template is not valid Jinja (line {error.lineno}: {error.message})") from None


def _plain_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The conversation as fresh dicts of strings (what the template sees: nothing else can reach the sandbox);
    keys whose value is None are dropped, as transformers drops them."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                        f"{type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        kept = {k: v for k, v in message.items() if v is not None}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in kept.items()):
            raise TypeError(f"messages[{i}] must map strings to strings, got {message!r}")
        plain.append({str(k): str(v) for k, v in kept.items()})
    return plain


def _stored_limit(value: Any) -> int | None:
    """A length limit as a config file stores it; None for "no limit" (absent, huge, or not a positive int)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT else None


class Tokenizer:
    """Text <-> token ids for one checkpoint (see the module docstring).

    Attributes:
        backend: the ``tokenizers.Tokenizer`` doing the work.
        max_length: default truncation limit in tokens, special tokens included (None = no limit).
        model_max_length: tokenizer_config.json's ``model_max_length`` (None when absent or unlimited).
        padding_side: "right" (BERT) or "left"; tokenizer_config.json's ``padding_side``, default "right".
        special_tokens: e.g. {"cls_token": "[CLS]", ...}, the special tokens the vocabulary has.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, special_tokens: dict[str, str] | None = None,
                 config: dict[str, Any] | None = None, max_length: int | None = None,
                 model_max_length: int | None = None):
        self.backend = backend
        self.config = dict(config or {})  # tokenizer_config.json's fields, written back by ``save``
        self.model_max_length = model_max_length
        self.max_length = max_length if max_length is not None else model_max_length
        self.padding_side: Side = "left" if self.config.get("padding_side") == "left" else "right"
        self.special_tokens = {k: t for k, t in (special_tokens or {}).items() if backend.token_to_id(t) is not None}

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence id (GPT-2's <|endoftext|>); None when the tokenizer has none (BERT)."""
        token = self.special_tokens.get("eos_token")
        return None if token is None else self.backend.token_to_id(token)

    @property
    def pad_id(self) -> int | None:
        """The padding id; GPT-2 has no pad token, so its end-of-sequence id pads (the mask hides it)."""
        token = self.special_tokens.get("pad_token")
        return self.eos_id if token is None else self.backend.token_to_id(token)

    def _limit(self, max_length: int | None) -> int | None:
        """The length limit of one call: ``max_length``, else the tokenizer's own; None = no limit."""
        limit = self.max_length if max_length is None else max_length
        if limit is not None:
            check_int("max_length", limit)
        return limit

    def _encodings(self, texts: Sequence[str], limit: int | None, truncation: bool,
                   add_special_tokens: bool) -> list[tokenizers.Encoding]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            got = "a str" if isinstance(texts, str) else f"items of type {sorted({type(t).__name__ for t in texts})}"
            raise TypeError(f"texts must be a list of strings (wrap a single text as [text]), got {got}")
        # the backend's truncation leaves room for the special tokens ([SEP] / </s> survive); set on every call:
        # ~0.1 us, cheaper than reading backend.truncation back to compare
        if truncation and limit is not None:
            self.backend.enable_truncation(limit)
        else:
            self.backend.no_truncation()
        return self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)

    def encode(self, texts: Sequence[str], *, max_length: int | None = None, truncation: bool = True,
               padding: Literal["longest", "max_length"] = "longest", padding_side: Side | None = None,
               add_special_tokens: bool = True) -> tuple[Tensor, Tensor]:
        """Token ids of each text, padded into one batch.

        Args:
            texts: B strings.
            max_length: truncate each sequence to this many tokens, special tokens included; None = the
                checkpoint's limit ``self.max_length`` (no truncation when that is None too).
            truncation: False = never truncate.
            padding: "longest" = pad to the longest sequence; "max_length" = pad to the limit.
            padding_side: "right" (BERT) or "left" (generation with GPT); None = ``self.padding_side``.
            add_special_tokens: BERT's [CLS] ... [SEP] (GPT-2 adds none).

        Returns:
            input_ids (B, N) long, padded with ``pad_id`` (0 when the tokenizer has no pad and no eos token);
            attention_mask (B, N) long, 1 = token, 0 = padding.
        """
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        limit = self._limit(max_length)
        rows = [e.ids for e in self._encodings(texts, limit, truncation, add_special_tokens)]
        width = max(map(len, rows), default=0)
        if padding == "max_length":
            if limit is None:
                raise ValueError("padding='max_length' needs max_length: this tokenizer has no limit of its own")
            width = max(width, limit)
        pad = self.pad_id or 0  # 0 when the tokenizer has neither a pad nor an eos token
        filler = [[pad] * (width - len(r)) for r in rows]
        ids = [r + f if side == "right" else f + r for r, f in zip(rows, filler)]
        mask = [[1] * len(r) + [0] * len(f) if side == "right" else [0] * len(f) + [1] * len(r)
                for r, f in zip(rows, filler)]
        return (torch.tensor(ids, dtype=torch.long).reshape(len(rows), width),
                torch.tensor(mask, dtype=torch.long).reshape(len(rows), width))

    def ids(self, texts: Sequence[str], *, max_length: int | None = None, truncation: bool = True,
            add_special_tokens: bool = True) -> list[list[int]]:
        """Each text's token ids, unpadded (options as in ``encode``)."""
        return [e.ids for e in self._encodings(texts, self._limit(max_length), truncation, add_special_tokens)]

    def encoding(self, text: str, *, max_length: int | None = None, truncation: bool = True,
                 add_special_tokens: bool = True) -> tokenizers.Encoding:
        """The ``tokenizers.Encoding`` of one text, as ``encode`` would tokenize it: ``.ids``, ``.tokens``,
        ``.offsets`` (character span of each token in ``text``; (0, 0) for special tokens), ``.word_ids``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._encodings([text], self._limit(max_length), truncation, add_special_tokens)[0]

    def tokens(self, text: str, *, max_length: int | None = None, truncation: bool = True,
               add_special_tokens: bool = True) -> list[str]:
        """The vocabulary string of each token of ``text`` (as ``encode`` would produce them, e.g.
        ``['[CLS]', 'hello', '##s', '[SEP]']``; GPT-2 writes a leading space as 'Ġ'): labels for attention maps."""
        return self.encoding(text, max_length=max_length, truncation=truncation,
                             add_special_tokens=add_special_tokens).tokens

    def decode(self, ids: Tensor | Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """ids (N,) -> text, as ``transformers``' ``decode`` (special tokens kept unless skipped)."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be one sequence (N,), got shape {tuple(ids.shape)}; decode rows one "
                                 f"at a time")
            ids = ids.tolist()
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of ``config["chat_template"]``; None when the tokenizer has none. Of a list of
        named templates (older tokenizer_config.json files), the one named "default", as transformers picks."""
        template = self.config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *,
                            add_generation_prompt: bool = True) -> str:
        """A conversation as the text the model was trained on, rendered with its chat template exactly as
        ``transformers``' ``apply_chat_template(messages, tokenize=False)`` renders it (the same sandboxed Jinja
        environment; the special tokens ``bos_token``, ``eos_token``, ... as variables).

        Args:
            messages: ``[{"role": "system" | "user" | "assistant", "content": text}, ...]``, at least one.
            add_generation_prompt: end with the header of an assistant turn, for the model to write the reply
                (transformers' default is False; here True, since generating is what this is for).

        Raises:
            ValueError: the tokenizer has no chat template; an empty conversation; a template that is not valid
                Jinja, refuses the conversation (``raise_exception``, e.g. roles that do not alternate) or tries
                something the sandbox forbids.
            TypeError: a message that is not a dict of strings.

        Example:
            >>> model, tok = hub.load("HuggingFaceTB/SmolLM2-135M-Instruct")
            >>> print(tok.apply_chat_template([{"role": "user", "content": "Hi"}]))
            <|im_start|>system
            You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
            <|im_start|>user
            Hi<|im_end|>
            <|im_start|>assistant
            <BLANKLINE>
        """
        template = self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (config['chat_template']): it is not a chat "
                             "model's, or its checkpoint keeps the template elsewhere")
        plain = _plain_messages(messages)
        compiled = _compiled_template(template)
        import jinja2  # importable: _compiled_template imported it

        variables = {name: self.special_tokens[name] for name in _SPECIAL_NAMES if name in self.special_tokens}
        try:
            return compiled.render(messages=plain, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as error:  # raise_exception's message, or the sandbox's SecurityError
            raise ValueError(f"the chat template refused the conversation: {error}") from None

    def chat_ids(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """The token ids of ``apply_chat_template(messages)``: the special tokens come from the template (none
        are added) and nothing is truncated, as ``transformers``' ``apply_chat_template(..., tokenize=True)``.
        ``torch.tensor([ids])`` is a prompt (1, N) for ``GPT.generate``."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.ids([text], truncation=False, add_special_tokens=False)[0]

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (and sentence_bert_config.json when the truncation
        limit differs from ``model_max_length``; an earlier one is removed otherwise) into ``directory``."""
        directory = Path(directory)
        self.backend.no_truncation()
        with atomic_path(directory / "tokenizer.json") as tmp:
            self.backend.save(str(tmp))
        config = {**self.config, **self.special_tokens, "padding_side": self.padding_side}
        config["model_max_length"] = self.model_max_length if self.model_max_length is not None else int(1e30)
        write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        limit = directory / "sentence_bert_config.json"
        if self.max_length is not None and self.max_length != self.model_max_length:
            write_text(limit, json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}, indent=2) + "\n")
        elif limit.is_file():  # an earlier save's limit would be read back in place of model_max_length
            limit.unlink()

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, "
                f"padding_side={self.padding_side!r}, special_tokens={self.special_tokens})")


def _special_tokens(config: dict[str, Any], model_type: str | None,
                    has_token: Callable[[str], bool]) -> dict[str, str]:
    """The special tokens tokenizer_config.json names, completed with the defaults of the model family
    (config.json's model_type, or else guessed from the vocabulary: ``has_token`` says whether it holds one)."""
    kind = model_type if model_type in _DEFAULT_SPECIALS else next(
        (k for k, probe in (("bert", "[CLS]"), ("gpt2", "<|endoftext|>"), ("roberta", "<s>")) if has_token(probe)),
        None)
    defaults = _DEFAULT_SPECIALS.get(kind, {}) if kind else {}
    named = {k: _token(config.get(k)) for k in _SPECIAL_NAMES}
    return {k: named[k] or defaults[k] for k in _SPECIAL_NAMES if named[k] or k in defaults}


def load_tokenizer(directory: str | Path, *, model_type: str | None = None) -> Tokenizer | None:
    """The tokenizer of a checkpoint directory; None when it holds no tokenizer files.

    ``model_type`` (config.json's) picks the default special tokens when tokenizer_config.json does not name
    them: BERT's [CLS]/[SEP]/[PAD]..., GPT-2's <|endoftext|>, RoBERTa's <s>/</s>/<pad>...
    """
    # a file missing from TOKENIZER_FILES would be a KeyError here, so resolve fetches every file read below
    file = {name: Path(directory) / name for name in TOKENIZER_FILES}
    config = {**read_json(file["special_tokens_map.json"]), **read_json(file["tokenizer_config.json"])}
    if file["tokenizer.json"].is_file():
        backend = _built(file["tokenizer.json"], "not a tokenizer the tokenizers library can read",
                         lambda: _from_json(file["tokenizer.json"], config))
        special = _special_tokens(config, model_type, lambda token: backend.token_to_id(token) is not None)
    elif file["vocab.txt"].is_file():
        special = _special_tokens(config, model_type or "bert", lambda token: False)
        backend = _built(file["vocab.txt"], "not a WordPiece vocabulary with the special tokens of "
                         "tokenizer_config.json", lambda: _wordpiece(file["vocab.txt"], config, special))
    elif file["vocab.json"].is_file() and file["merges.txt"].is_file():
        special = _special_tokens(config, model_type, read_json(file["vocab.json"]).__contains__)
        backend = _built(file["merges.txt"], "with vocab.json, not a byte-level BPE tokenizer",
                         lambda: _byte_level_bpe(file["vocab.json"], file["merges.txt"], config, special))
    else:
        return None
    model_max_length = _stored_limit(config.get("model_max_length"))
    max_length = _stored_limit(read_json(file["sentence_bert_config.json"]).get("max_seq_length"))
    return Tokenizer(backend, special_tokens=special, config=config, max_length=max_length,
                     model_max_length=model_max_length)


__all__ = ["Tokenizer", "load_tokenizer", "TOKENIZER_FILES"]
