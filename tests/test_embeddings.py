"""attnkit.embed: packed rows (no padding) equal padded batches, and the bundled MiniLM's embeddings equal
sentence-transformers' on the same weights."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.embeddings import _embed_packed, _embed_padded
from attnkit.models import BERT, BERTConfig

SENTENCES = [
    "The animal didn't cross the street because it was too tired.",
    "A man is playing a guitar.",
    "",
    "Attention is all you need.",
    "Café au lait, s'il vous plaît — très chaud!",
    "🙂 emoji and symbols: <b>bold</b> & 100% ... ?!",
    "short",
    " ".join(["long sentence"] * 200),  # past the 256-token limit: truncated as sentence-transformers does
    "The quick brown fox jumps over the lazy dog; the dog does not mind.",
    "数字和中文字符也可以。",
    "The cat sat on the mat.",
    "A cat was sitting on a mat.",
]


@pytest.mark.parametrize("kernel", ["dense", "sdpa", "tiled"])
def test_packed_rows_equal_padded_batches(kernel):
    torch.manual_seed(0)
    model = BERT(BERTConfig.preset("tiny", vocab_size=50, kernel=kernel)).double().eval()
    batch = [torch.randint(1, 50, (n,)) for n in (7, 1, 30, 12, 12, 3)]
    with torch.no_grad():
        packed, padded = _embed_packed(model, batch), _embed_padded(model, batch, pad_id=0)
    torch.testing.assert_close(packed, padded, atol=1e-10, rtol=1e-10)


def test_packed_rows_apply_no_key_padding():
    """A packed row holds no padding: every layer gets the document mask alone, with no dense all-True key
    padding ANDed into it."""
    model = BERT(BERTConfig.preset("tiny", vocab_size=50)).eval()
    seen = []
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["key_padding"]),
                                        with_kwargs=True)
    with torch.no_grad():
        _embed_packed(model, [torch.randint(1, 50, (n,)) for n in (5, 3)])
    assert seen == [None] * len(model.layers)


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from attnkit import hub

    model, tokenizer = hub.load(attnkit.embeddings.DEFAULT_MODEL)
    reference = st.SentenceTransformer(str(hub.resolve(attnkit.embeddings.DEFAULT_MODEL)), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    for batch_size in (32, 5):
        ours = attnkit.embed(SENTENCES, (model, tokenizer), batch_size=batch_size)
        cosine = (ours * expected).sum(-1)
        assert cosine.min().item() >= 0.99999, cosine
    unpacked = attnkit.embed(SENTENCES, (model, tokenizer), pack=False)
    assert ((unpacked * expected).sum(-1).min().item()) >= 0.99999


def test_default_model_and_bad_input():
    vectors = attnkit.embed(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell."])
    assert vectors.shape == (3, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # paraphrases closer than an unrelated sentence
    assert attnkit.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of strings"):
        attnkit.embed("one sentence")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        attnkit.embed(["a"], batch_size=0)
