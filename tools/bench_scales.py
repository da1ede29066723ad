#!/usr/bin/env python3
"""What per-channel scales (format 1.2, spec 7.5) cost: bytes, decode time, estimate time -- as ratios
against the same tensor without scales, measured in the same run.

For a conv-like weight (C output channels, default 512 x 256 x 3 x 3 = 1.2M elements, a 32-entry
codebook) in codebook-dense and codebook-sparse (70% zeros), with float32 and float16 scales along
axis 0 and along the last axis:

* bytes of the section, scaled / unscaled (the scales are C values; nothing else changes);
* decode time (reader[name], section read + lanes + scales), scaled / unscaled, best of --repeat;
* the scale pass alone (dcformat.decode.scale_values on the decoded float32 buffer) / the whole decode;
* estimate_codebook_bytes time / encode_codebook time, and the estimate's error in bytes.

    .venv/bin/python tools/bench_scales.py            # 1.2M elements
    .venv/bin/python tools/bench_scales.py --quick    # 74k elements
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dcformat  # noqa: E402
from dcformat.decode import scale_values  # noqa: E402
from dcformat.encode import estimate_codebook_bytes  # noqa: E402


def best(fn, n: int) -> float:
    fn()  # warm-up (numba compiles on first use)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paired(f, g, n: int) -> tuple[float, float]:
    """Best times of f and of g, run alternately (a busy machine's drift hits both alike)."""
    f(), g()
    tf, tg = [], []
    for _ in range(n):
        for fn, ts in ((f, tf), (g, tg)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return min(tf), min(tg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 128 x 64 x 3 x 3 tensor instead of 512 x 256 x 3 x 3")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    shape = (128, 64, 3, 3) if args.quick else (512, 256, 3, 3)
    n = int(np.prod(shape))
    rng = np.random.default_rng(0)
    cb = np.sort(rng.standard_normal(32)).astype(np.float32)
    cb[np.argmin(np.abs(cb))] = 0.0
    zero = int(np.flatnonzero(cb == 0)[0])
    dense_idx = rng.integers(0, 32, shape)
    sparse_idx = np.where(rng.random(shape) < 0.7, zero, dense_idx)
    print(f"tensor {'x'.join(map(str, shape))} ({n:,} elements), 32-entry codebook; best of {args.repeat}; "
          f"numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    print(f"{'layout':16} {'scales':18} {'bytes':>10} {'x unscaled':>10} {'decode ms':>10} {'x unscaled':>10} "
          f"{'scale pass':>10} {'est/enc':>8} {'est err B':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for enc, idx in (("codebook-dense", dense_idx), ("codebook-sparse", sparse_idx)):
            base = dcformat.encode_codebook("w", cb, idx, encoding=enc)
            path = os.path.join(tmp, "base.dcz")
            dcformat.write(path, [base])
            rb = dcformat.open(path)
            t_base = best(lambda: rb["w"], args.repeat)
            print(f"{enc:16} {'none':18} {base.nbytes:>10,} {1:>10.4f} {t_base * 1e3:>10.2f} {1:>10.2f} "
                  f"{'-':>10} {'-':>8} {'-':>9}")
            for axis in (0, len(shape) - 1):
                for sdt in ("float32", "float16"):
                    sc = np.exp(rng.uniform(-4, 2, shape[axis])).astype(np.float32)
                    kw = dict(encoding=enc, scales=sc, scale_axis=axis, scale_dtype=sdt)
                    t_enc = best(lambda: dcformat.encode_codebook("w", cb, idx, **kw), 1)
                    t_est = best(lambda: estimate_codebook_bytes(cb, idx, **kw), 1)
                    t = dcformat.encode_codebook("w", cb, idx, **kw)
                    est = estimate_codebook_bytes(cb, idx, **kw)
                    p = os.path.join(tmp, "s.dcz")
                    dcformat.write(p, [t])
                    with dcformat.open(p) as r:
                        t_b, t_dec = paired(lambda: rb["w"], lambda: r["w"], args.repeat)
                    flat = cb[idx].reshape(-1).astype(np.float32)
                    inner = int(np.prod(shape[axis + 1:]))
                    s32 = sc.astype(sdt).astype(np.float32)
                    t_pass = best(lambda: scale_values(flat.copy(), s32, inner, "float32"), args.repeat)
                    t_copy = best(lambda: flat.copy(), args.repeat)
                    label = f"axis {axis}, {shape[axis]} {sdt}"
                    print(f"{enc:16} {label:18} {t.nbytes:>10,} {t.nbytes / base.nbytes:>10.4f} {t_dec * 1e3:>10.2f} "
                          f"{t_dec / t_b:>10.2f} {max(t_pass - t_copy, 0) / t_dec:>10.1%} {t_est / t_enc:>8.2f} "
                          f"{est.nbytes - t.nbytes:>9}")
            rb.close()
    print("x unscaled (decode): scaled and unscaled decodes run alternately, best of each; scale pass: "
          "scale_values on the decoded float32 buffer (less a copy of it), as a share of the whole decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
