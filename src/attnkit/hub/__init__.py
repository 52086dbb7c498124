"""Hugging Face-style checkpoints in attnkit models: load real weights (BERT, MiniLM, RoBERTa, XLM-R, DistilBERT,
ELECTRA, GPT-2, and the Llama family: Llama, Mistral, Qwen 2/3, Gemma 2/3, Phi-3), fine-tuned ones with their task
heads, into attnkit's own implementations, and save attnkit models so that ``transformers`` reads them.

    >>> from attnkit import hub
    >>> model, tok = hub.load("sentence-transformers/all-MiniLM-L6-v2")   # bundled: no download
    >>> ids, mask = tok.encode(["The cat sat.", "A dog barked loudly."])  # (2, N) each, right-padded
    >>> model(ids, attention_mask=mask).last_hidden_state.shape           # (2, N, 384)
    >>> gpt, tok = hub.load("/path/to/gpt2")                              # any local HF directory
    >>> hub.save(gpt, "/tmp/copy", tok)                                   # config.json + model.safetensors

Files: ``resolve`` (name -> directory), ``errors`` (CheckpointError), ``files`` (config.json and weight files),
``rules`` (tensor mapping machinery), ``architectures`` (GPT-2, the heads of each transformers class, and the
table), ``bert_family`` (BERT, RoBERTa, DistilBERT, ELECTRA), ``llama`` (the Llama family), ``rope`` (config.json's
RoPE settings), ``tokenizer``, ``checkpoint`` (load/save; ``strict=False``).
"""

from .checkpoint import load, load_model, save
from .errors import CheckpointError
from .resolve import BUNDLED_NAMES, bundled_minilm, resolve
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["load", "load_model", "save", "CheckpointError", "resolve", "bundled_minilm", "BUNDLED_NAMES",
           "Tokenizer", "load_tokenizer"]
