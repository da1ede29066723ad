"""Fixtures shared by several test files. Nothing here imports torch at module level: the tests
that prove dcformat works without PyTorch collect this file too."""

from __future__ import annotations

import contextlib
import importlib
import sys

import pytest


def import_written(directory, name: str, source: str):
    """Write ``source`` as ``directory/name.py`` and import it (a model module a test's --model names;
    it stays in sys.modules, so the tools find it without the directory on the path)."""
    (directory / f"{name}.py").write_text(source)
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch's CPU thread count set to ``n`` for the block (small models train fastest on one
    thread, and two threads crawl on a busy machine), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits as converters.data loads them (train and test splits)."""
    from converters import data

    return data.load_digits()
