"""Fuzz the reader: open, list, every record, decode every tensor, metadata, graph, verify.

    python tools/fuzz/fuzz_reader.py -max_len=4096 -dict=tools/fuzz/dcz.dict CORPUS_DIR   (atheris)
    python tools/fuzz/fuzz_reader.py --replay FILE_OR_DIR ...                           (no atheris)

Any exception other than dcformat.DczError is a crash; so is a decoded array whose dtype,
shape or count of non-zero elements differs from its record, or a codebook tensor whose
uint8-index decoding (dcformat.runtime.decode_indices) disagrees with the full decoder.
"""

from __future__ import annotations

import sys

import common

with common.instrumented(__name__ == "__main__"):
    import numpy as np

    import dcformat
    from dcformat.constants import DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE
    from dcformat.runtime import decode_indices


def _check_array(r, name, arr):
    info = r.info(name)
    assert arr.dtype == DTYPES[info.dtype], (name, arr.dtype, info.dtype)
    assert arr.shape == info.shape, (name, arr.shape, info.shape)
    assert int(np.count_nonzero(arr)) == info.nonzeros, (name, info.nonzeros)


def exercise(path, run):
    r = run(dcformat.open, path)
    if r is None:
        return
    with r:
        names = list(r)
        assert len(names) == len(r)
        for name in names:
            info = r.info(name)
            info.descriptor(), info.part_offsets(), info.decoded_nbytes, repr(info)
            arr = run(r.__getitem__, name)
            if arr is None:
                continue
            _check_array(r, name, arr)
            if info.encoding in (ENC_CB_DENSE, ENC_CB_SPARSE):
                got = run(decode_indices, r, name)
                if got is not None:  # compact mode's arithmetic (Gather, scales: Mul, Add 0) gives the same bits
                    u = np.dtype(f"u{arr.dtype.itemsize}")
                    assert np.array_equal(got.rebuild().view(u), arr.view(u)), f"{name}: index decoding differs"
        run(lambda: r.metadata)
        run(lambda: r.graph_bytes)
        run(lambda: r.graph)
        run(r.verify)
        repr(r)


def test_one_input(data: bytes) -> None:
    common.run_both_modes(data, exercise)


TestOneInput = test_one_input

if __name__ == "__main__":
    common.main(test_one_input)
