"""Test options: slow tests (large inputs, > ~10 s) run only with ``--runslow`` (``make test-all``)."""

import os
import shutil

import pytest
import tokenizers
import torch

from attnkit import hub
from attnkit.models import GPT, AttentionConfig, GPTConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets one core: torch's default of one thread per core in every worker
    # oversubscribes the machine and makes small kernels several times slower.
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large inputs; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# The text the tiny tokenizer of ``gpt_dir`` is trained on (tests/test_cli*.py).
TRAINING_TEXT = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."]


@pytest.fixture(scope="session")
def gpt_dir(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a byte-level BPE tokenizer trained here (no download)."""
    directory = tmp_path_factory.mktemp("gpt")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TRAINING_TEXT * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(str(directory))
    tokenizer = hub.load_tokenizer(directory, model_type="gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, dim=32, num_layers=2,
                          attention=AttentionConfig(num_heads=2)))
    hub.save(model, directory, tokenizer)
    return directory


# ---- a real browser (Debian's chromium driven by Playwright) for the HTML view's tests --------------------

def missing_browser(reason: str):
    """Skip, or fail where the browser tests must run (CI sets ATTNKIT_REQUIRE_BROWSER=1)."""
    if os.environ.get("ATTNKIT_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"ATTNKIT_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module; skips (or fails, in CI) where it cannot run."""
    try:
        from playwright import sync_api
    except ImportError:
        missing_browser("playwright is not installed (pip install -e '.[test]')")
    executable = shutil.which("chromium")
    if executable is None:
        missing_browser("no `chromium` on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()
