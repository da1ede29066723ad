"""huffman.code_lengths against package-merge done the plain way (each item carries the count of
every symbol in it): the same lengths on every input, so files written before and after the
faster version are the same bytes (spec/vectors), and the lengths are optimal and within the limit."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcformat import huffman
from dcformat.errors import HuffmanError


def reference_lengths(freqs, max_len: int) -> list[int]:
    """Package-merge as first written in dcformat: leaves (count, i) in (count, symbol) order, each
    list the leaves merged with the pairs of the list before, sorted by (weight, key); a symbol's
    length is how often it occurs in the first 2n - 2 items of the last list."""
    freqs = [int(f) for f in freqs]
    used = [s for s, f in enumerate(freqs) if f > 0]
    lengths = [0] * len(freqs)
    if len(used) == 1:
        lengths[used[0]] = 1
    if len(used) <= 1:
        return lengths
    n = len(used)
    order = sorted(used, key=lambda s: (freqs[s], s))
    leaves = [(freqs[s], i, (i,)) for i, s in enumerate(order)]  # symbols as a tuple of leaf indices
    current = leaves
    for _ in range(max_len - 1):
        packages = [(current[j][0] + current[j + 1][0], n + j, current[j][2] + current[j + 1][2])
                    for j in range(0, len(current) - 1, 2)]
        current = sorted(leaves + packages, key=lambda item: (item[0], item[1]))
    for item in current[: 2 * n - 2]:
        for i in item[2]:
            lengths[order[i]] += 1
    return lengths


def huffman_cost(freqs) -> int:
    """Total bits of an unrestricted Huffman code (a heap of weights): the optimum without a limit."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) <= 1:
        return 0
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, a + b)
    return total


counts = st.lists(st.integers(0, 50), min_size=1, max_size=80) | st.lists(
    st.integers(0, 2**40), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(counts, st.integers(1, 15))
def test_lengths_match_the_reference(freqs, max_len):
    used = sum(f > 0 for f in freqs)
    if used > 1 << max_len:
        with pytest.raises(HuffmanError):
            huffman.code_lengths(freqs, max_len)
        return
    got = huffman.code_lengths(np.array(freqs, np.int64), max_len)
    assert got.dtype == np.uint8 and got.tolist() == reference_lengths(freqs, max_len)


@pytest.mark.parametrize("alphabet, max_len", [(256, 11), (256, 8), (1000, 10), (4096, 15), (300, 9)])
def test_skewed_counts_match_the_reference_and_the_optimum(alphabet, max_len):
    """Counts spread over many orders of magnitude: the limit binds (a plain Huffman code would be longer)."""
    rng = np.random.default_rng(alphabet + max_len)
    freqs = np.round(np.exp(rng.normal(0, 4, alphabet))).astype(np.int64) * (rng.random(alphabet) < 0.8)
    got = huffman.code_lengths(freqs, max_len)
    assert got.tolist() == reference_lengths(freqs, max_len)
    used = got[got > 0].astype(np.int64)
    assert used.max() <= max_len
    assert np.sum(2.0 ** -used) == 1.0  # a complete code
    assert huffman.coded_bits(freqs, got) >= huffman_cost(freqs)  # no code beats Huffman's


def test_without_a_binding_limit_the_cost_is_huffmans():
    """A limit longer than any Huffman tree of these counts can be deep: the cost is Huffman's own (at 15
    bits it may not be: counts from 1 to 999 can make a tree 16 deep)."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        freqs = rng.integers(0, 1000, int(rng.integers(2, 200)))
        got = huffman.code_lengths(freqs, 40)
        assert huffman.coded_bits(freqs, got) == huffman_cost(freqs)
        assert huffman.coded_bits(freqs, huffman.code_lengths(freqs, 15)) >= huffman_cost(freqs)


def test_small_cases():
    assert huffman.code_lengths([0, 0, 0]).tolist() == [0, 0, 0]
    assert huffman.code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert huffman.code_lengths([3, 0, 3]).tolist() == [1, 0, 1]
    assert huffman.code_lengths([1, 1, 1, 1], 2).tolist() == [2, 2, 2, 2]
    with pytest.raises(HuffmanError):
        huffman.code_lengths([1, 1, 1, 1, 1], 2)


@pytest.mark.parametrize("n", [2, 3, huffman.SMALL_ALPHABET - 1, huffman.SMALL_ALPHABET, huffman.SMALL_ALPHABET + 1, 100])
def test_the_python_and_numpy_merges_agree(n):
    """Small alphabets are merged in plain Python, larger ones with numpy: the same lists either way."""
    rng = np.random.default_rng(n)
    for max_len in (int(np.ceil(np.log2(n))) or 1, 11, 15):
        leaves = np.sort(rng.integers(1, 30, n))  # many ties
        py = huffman._merged_lists_py(leaves, max_len)
        nps = huffman._merged_lists(leaves, max_len)
        assert [list(x) for x in py] == [x.tolist() for x in nps]


def test_cached_lengths_come_back_as_copies():
    freqs = np.array([5, 1, 1, 3], np.int64)
    first = huffman.code_lengths(freqs, 3)
    first[:] = 9  # the caller's own array
    assert huffman.code_lengths(freqs, 3).tolist() == reference_lengths(freqs, 3)
    assert huffman.code_lengths(list(freqs), 3).flags.writeable
