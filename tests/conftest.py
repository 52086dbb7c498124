"""Test options: slow tests (large inputs, > ~10 s) run only with ``--runslow`` (``make test-all``)."""

import os

import pytest
import torch

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
