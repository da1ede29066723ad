#!/usr/bin/env python3
"""The decoders' share of loading .dcz files, of any encoding: decode_many of every tensor of a file
already open (read, CRC-32, decode), in one process, best of --repeat alternating runs, for

* numba            decode.decode_records: the small tensors in one kernel call (this branch's path)
* numba per tensor decode.decode_tensor for each tensor (the numba path before decode_records)
* numpy            the numpy lane decoder (dcformat/npdecode.py; the default until ~1 s of it is spent)

with the ratio of each to *numba*, after checking that all three give the same arrays bit for bit.

    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_decode.py model.dcz [more.dcz ...] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = ("numba", "numba per tensor", "numpy")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help=".dcz files")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many alternating runs")
    args = ap.parse_args(argv)

    import dcformat
    from dcformat import decode

    records = decode.decode_records

    def per_tensor(batch, span=None):
        return {i.name: decode.decode_tensor(i, s) for i, s in batch}

    def use(mode):
        os.environ["DCZ_DECODER"] = mode.split()[0]
        decode.decode_records = per_tensor if mode == "numba per tensor" else records

    print("| file | tensors | encodings | " + " | ".join(MODES) + " | numba per tensor / numba | numpy / numba |")
    print("|---|---:|---|" + "---:|" * (len(MODES) + 2))
    try:
        for path in args.files:
            with dcformat.open(path) as r:
                names = list(r)
                enc = Counter(r.info(n).encoding + (" (scaled)" if r.info(n).scaled else "") for n in names)
                got = {}
                for mode in MODES:  # a warm-up of each, and the check
                    use(mode)
                    got[mode] = r.decode_many(names)
                for mode in MODES[1:]:
                    for n in names:
                        a, b = got[MODES[0]][n], got[mode][n]
                        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                            raise SystemExit(f"{path}: {n!r} differs between {MODES[0]} and {mode}")
                best = dict.fromkeys(MODES, float("inf"))
                for _ in range(args.repeat):
                    for mode in MODES:
                        use(mode)
                        t = time.perf_counter()
                        r.decode_many(names)
                        best[mode] = min(best[mode], time.perf_counter() - t)
            encs = ", ".join(f"{k} {v}" for k, v in sorted(enc.items()))
            print(f"| {os.path.basename(path)} | {len(names)} | {encs} | "
                  + " | ".join(f"{best[m] * 1e3:.2f} ms" for m in MODES)
                  + f" | {best[MODES[1]] / best[MODES[0]]:.2f}x | {best[MODES[2]] / best[MODES[0]]:.2f}x |")
    finally:
        decode.decode_records = records
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
