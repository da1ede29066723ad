#!/usr/bin/env python3
"""Decode speed and size of .dcz codebook tensors against zstandard, measured in one run.

For (a) a codebook-dense tensor (8-bit codebook, as for conv layers) and (b) a 90%-sparse
codebook-sparse tensor (5-bit codebook, as for fc layers) of N elements:

* size: .dcz section bytes vs zstd level 3 and 19 of the same fp32 tensor;
* decode: reader[name] (checksum + Huffman lanes + codebook lookup into a new fp32 array)
  vs zstd decompression of the same fp32 tensor into a numpy array (best of R runs);
* encode: encode_codebook time.

Targets (spec issue): decode ratio zstd/dcz >= 1, size ratio zstd19/dcz > 1, encode in seconds.

    python tools/bench_codec.py            # 25M elements, the issue's setting
    python tools/bench_codec.py --n 2000000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import zstandard

import dcformat


def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear codebook over [min, max] of w, nearest-centroid indices (no zero entry)."""
    k = 1 << bits
    cb = np.linspace(w.min(), w.max(), k).astype(np.float32)
    step = (cb[-1] - cb[0]) / (k - 1)
    idx = np.clip(np.rint((w - cb[0]) / step), 0, k - 1).astype(np.uint8)
    return cb, idx


def make_dense(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal(n, dtype=np.float32) * 0.05
    return quantize(w, 8)


def make_sparse(n: int, rng, density: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal(n, dtype=np.float32) * 0.05
    keep = np.abs(w) >= np.quantile(np.abs(w), 1 - density)
    cb, idx = quantize(w[keep], 5)
    full_cb = np.concatenate([[0.0], cb]).astype(np.float32)  # entry 0 is the pruned zero
    full_idx = np.zeros(n, np.uint8)
    full_idx[keep] = idx + 1
    return full_cb, full_idx


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(label, codebook, indices, encoding, args, tmp) -> dict:
    t = time.perf_counter()
    enc = dcformat.encode_codebook("w", codebook, indices, encoding=encoding)
    t_enc = time.perf_counter() - t
    path = os.path.join(tmp, f"{label}.dcz")
    dcformat.write(path, [enc])
    dense = codebook[indices]
    raw = dense.tobytes()

    with dcformat.open(path) as r:
        assert np.array_equal(r["w"], dense), "decode mismatch"
        t_dcz = best(lambda: r["w"], args.repeat)

    sizes, t_zstd = {}, None
    dec = zstandard.ZstdDecompressor()
    for level in (3, 19):
        t = time.perf_counter()
        comp = zstandard.ZstdCompressor(level=level, threads=-1).compress(raw)
        sizes[level] = (len(comp), time.perf_counter() - t)
        if level == 3:
            blob = comp
    # zstd's fastest decode is of its level-3 output; level 19 decodes at about the same speed
    t_zstd = best(lambda: np.frombuffer(dec.decompress(blob), np.float32), args.repeat)
    return {
        "label": label, "encoding": enc.encoding, "n": indices.size, "fp32": len(raw),
        "dcz": enc.nbytes, "gap_bits": enc.info.gap_bits, "zstd3": sizes[3][0], "zstd19": sizes[19][0],
        "t_zstd19": sizes[19][1], "t_enc": t_enc, "t_dcz": t_dcz, "t_zstd": t_zstd,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=25_000_000, help="elements per tensor (default 25M)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs; the best counts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import numba

    rng = np.random.default_rng(args.seed)
    print(f"# bench_codec: n={args.n:,} repeat={args.repeat} python={platform.python_version()} "
          f"numpy={np.__version__} numba={numba.__version__} threads={numba.get_num_threads()} "
          f"zstandard={zstandard.__version__} cpus={os.cpu_count()}")
    # warm the JIT so compile time is not timed
    dcformat.encode_codebook("warm", *make_sparse(4096, rng), encoding="codebook-sparse")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            bench("dense-8bit", *make_dense(args.n, rng), "codebook-dense", args, tmp),
            bench("sparse90-5bit", *make_sparse(args.n, rng), "codebook-sparse", args, tmp),
        ]
    ok = True
    print(f"{'tensor':<14} {'encoding':<16} {'fp32 MB':>8} {'dcz MB':>8} {'zstd3 MB':>9} {'zstd19 MB':>9} "
          f"{'zstd19/dcz':>10} {'enc s':>6} {'dcz dec s':>9} {'zstd dec s':>10} {'zstd/dcz speed':>14}")
    for r in rows:
        size_ratio = r["zstd19"] / r["dcz"]
        speed_ratio = r["t_zstd"] / r["t_dcz"]
        ok &= size_ratio > 1 and speed_ratio >= 1
        print(f"{r['label']:<14} {r['encoding']:<16} {r['fp32'] / 1e6:8.2f} {r['dcz'] / 1e6:8.2f} "
              f"{r['zstd3'] / 1e6:9.2f} {r['zstd19'] / 1e6:9.2f} {size_ratio:10.2f} {r['t_enc']:6.2f} "
              f"{r['t_dcz']:9.4f} {r['t_zstd']:10.4f} {speed_ratio:14.2f}")
        print(f"  ({r['label']}: fp32/dcz = {r['fp32'] / r['dcz']:.2f}x, gap bits {r['gap_bits']}, "
              f"zstd-19 compression took {r['t_zstd19']:.1f} s)")
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
