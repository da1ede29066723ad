#!/usr/bin/env python3
"""Lossless sizes and decode speed: `dcconvert --lossless` (float-planes, format 1.1) against
zstd -19, xz -9e and ZipNN of the same ONNX file, measured side by side in one run.

Models: the ~25M-parameter CNN and the transformer encoder of BENCHMARKS.md (random weights,
built as tools/bench.py builds them), and real pretrained ONNX models shipped inside PyPI
wheels (PP-OCRv4 det/rec and the mobile cls of rapidocr-onnxruntime, Silero VAD fp32 and
fp16), fetched with `pip download --no-deps` into --work (nothing is installed; the wheel is
unzipped), or read where .venv-bench has those packages installed. --models picks models by words of
their names (e.g. --models det,rec,cls,silero). ZipNN runs in its own virtual environment (--zipnn-python, default
.venv-bench/bin/python when it exists: `python3 -m venv .venv-bench &&
.venv-bench/bin/pip install zipnn torch==2.13.0`) on a copy of the ONNX file's bytes (its
compress mutates its input), with the model's float dtype as bytearray_dtype, the bytes padded
with up to 3 zeros to a multiple of the itemsize (ZipNN 0.5.4 crashes on other lengths).

Decode time: dcformat.load_weights(model.dcz) (open, every tensor decoded to a numpy array)
against reading the zstd -19 file and zstandard's decompress of it, both in this process, best of
--repeat alternating runs, after one warm-up each; the ratio is zstd's time over ours (> 1: .dcz
decodes faster). *of which open* is dcformat.open + close alone (header inflated, parsed, every
record checked: a per-tensor cost, no tensor data read). --decode-only adds *tensors alone*: decode_many of
every tensor of a file already open (read, checksummed, decoded: the decoders' share), and its ratio to zstd.
The zstd -d command (a process, output to /dev/null) is timed too. Each .dcz is
checked to decode to the ONNX model's weights bit for bit.

    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_lossless.py --work /tmp/dcz-bench-lossless
    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_lossless.py --quick     # small CNN, no xz
    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_lossless.py --decode-only --decoder numba  # reuse files
    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_lossless.py --decode-only --decoder both   # numba, numpy
    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_lossless.py --per-tensor model.onnx  # which tensors lose
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench import best, log  # noqa: E402 - the timer and progress line of tools/bench.py
from bench_load_real import best_pair  # noqa: E402 - alternating runs: a loaded machine slows both alike

WHEELS = {  # package spec -> ONNX files inside its wheel (glob, relative to the unzipped wheel)
    "rapidocr-onnxruntime==1.4.4": ["rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"],
    "silero-vad==6.2.3": ["silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad_half.onnx"],
}

ZIPNN_CHILD = r"""
import json, sys, time
from zipnn import ZipNN
path, dtype = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
data += bytes(-len(data) % (2 if "16" in dtype else 4))  # ZipNN crashes on a length not a multiple of the itemsize
z = ZipNN(input_format="byte", bytearray_dtype=dtype)
c = z.compress(bytearray(data))  # a copy: ZipNN's compress mutates its input
t = time.perf_counter(); d = z.decompress(c); t = time.perf_counter() - t
assert bytes(d) == data, "ZipNN round trip failed"
print(json.dumps({"bytes": len(c), "decode_s": t}))
"""


# ------------------------------------------------------------------------------------------ models
def build_cnn(work: str, scale: float) -> str:
    path = os.path.join(work, f"cnn-x{scale:g}.onnx")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_convert.py"), "--build", path, str(scale)],
                       check=True, capture_output=True, text=True)
    return path


def build_transformer(work: str, quick: bool) -> str:
    """The transformer encoder of tools/bench.py (same seed, sizes and export settings), exported in a
    child process: torch loads its own OpenMP runtime, whose spinning threads would slow this one's
    decoding (dcformat.kernels sets OMP_WAIT_POLICY=PASSIVE, which only works if it is first)."""
    path = os.path.join(work, "transformer" + ("-quick" if quick else "") + ".onnx")
    if not os.path.exists(path):
        subprocess.run([sys.executable, __file__, "--build-transformer", path, "1" if quick else "0"], check=True)
    return path


def _export_transformer(path: str, quick: bool) -> None:
    import warnings

    import torch
    from torch import nn

    torch.set_num_threads(1)
    d, layers, ff = (128, 2, 512) if quick else (256, 4, 1024)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, 8, ff, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif "norm" not in name:
                nn.init.normal_(p, std=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 64, d),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})


def installed(files: list[str]) -> list[str] | None:
    """The paths of ``files`` in the site-packages of .venv-bench (the bench venv, where the packages of
    WHEELS are installed), or None unless it holds all of them."""
    for sp in glob.glob(os.path.join(ROOT, ".venv-bench", "lib", "python*", "site-packages")):
        paths = [os.path.join(sp, f) for f in files]
        if all(os.path.exists(p) for p in paths):
            return paths
    return None


def wheel_models(work: str) -> list[tuple[str, str]]:
    """(label, path) of the ONNX files inside the wheels of WHEELS (downloaded once into work; those of
    the packages installed in .venv-bench when it holds them: the same files, no download)."""
    out = []
    wdir = os.path.join(work, "wheels")
    for spec, files in WHEELS.items():
        name = spec.split("==")[0].replace("-", "_")
        have = installed(files)
        if have:
            out += [(f"{spec.split('==')[0]}: {os.path.basename(f)}", p) for f, p in zip(files, have)]
            continue
        have = glob.glob(os.path.join(wdir, f"{name}-*.whl"))
        if not have:
            log(f"pip download {spec}")
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wdir, spec],
                               capture_output=True, text=True)
            have = glob.glob(os.path.join(wdir, f"{name}-*.whl"))
            if p.returncode or not have:
                log(f"  skipped: {p.stderr.strip().splitlines()[-1:] or 'no wheel'}")
                continue
        unz = os.path.join(work, name)
        with zipfile.ZipFile(have[0]) as z:
            for f in files:
                if not os.path.exists(os.path.join(unz, f)):
                    z.extract(f, unz)
                out.append((f"{spec.split('==')[0]}: {os.path.basename(f)}", os.path.join(unz, f)))
    return out


# ------------------------------------------------------------------------------------------ measuring
def compressed(cmd: list[str], src: str, dst: str) -> int:
    """``cmd src`` to stdout into dst (a file argument: zstd then records the content size in the frame)."""
    if not os.path.exists(dst):
        with open(dst + ".tmp", "wb") as fo:
            subprocess.run([*cmd, src], stdout=fo, check=True)
        os.replace(dst + ".tmp", dst)
    return os.path.getsize(dst)


def float_dtype(path: str) -> str:
    """The float dtype holding most of a model's weight bytes (for ZipNN's bytearray_dtype)."""
    import dcformat

    count: dict[str, int] = {}
    with dcformat.open(path) as r:
        for n in r:
            i = r.info(n)
            count[i.dtype] = count.get(i.dtype, 0) + i.decoded_nbytes
    floats = {k: v for k, v in count.items() if k in ("float32", "float16", "bfloat16")}
    return max(floats, key=floats.get) if floats else "float32"


def zipnn(python: str | None, path: str, dtype: str) -> dict | None:
    if not python:
        return None
    p = subprocess.run([python, "-c", ZIPNN_CHILD, path, dtype], capture_output=True, text=True)
    if p.returncode:
        log(f"  zipnn failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def same_weights(onnx_path: str, dcz_path: str) -> tuple[int, int]:
    """(tensors, float-planes tensors); raises unless the .dcz holds the ONNX weights bit for bit."""
    import onnx
    from onnx import numpy_helper

    import dcformat

    want = {}

    def walk(g):
        for t in g.initializer:
            want[t.name] = t
        for node in g.node:
            for a in node.attribute:
                if a.type == a.TENSOR and node.op_type == "Constant":
                    want[node.output[0]] = a.t
                for sub in ([a.g] if a.type == a.GRAPH else list(a.graphs)):
                    walk(sub)

    walk(onnx.load(onnx_path).graph)
    planes = 0
    with dcformat.open(dcz_path) as r:
        ws = dcformat.load_weights(dcz_path)
        for name in r:
            planes += r.info(name).encoding == "float-planes"
        for name, t in want.items():
            if name not in ws:
                continue  # kept inside the graph (e.g. a string tensor) or under another record name
            a, b = numpy_helper.to_array(t), ws[name]
            assert a.shape == b.shape and a.tobytes() == np.ascontiguousarray(b).tobytes(), name
    return len(ws), planes


def onnx_tensors(onnx_path: str) -> dict:
    """name -> array of every initializer and Constant tensor of an ONNX file, subgraphs included."""
    import onnx
    from onnx import numpy_helper

    out = {}

    def walk(g):
        for t in g.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for node in g.node:
            for a in node.attribute:
                if a.type == a.TENSOR and node.op_type == "Constant":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
                for sub in ([a.g] if a.type == a.GRAPH else list(a.graphs)):
                    walk(sub)

    walk(onnx.load(onnx_path).graph)
    return out


def per_tensor(onnx_path: str, top: int) -> None:
    """Each tensor's section as dcformat.encode makes it against zstd -19 of the tensor's bytes, the
    largest tensors first, and how many zstd beats: which tensors lose, and by how much."""
    import zstandard

    import dcformat

    z = zstandard.ZstdCompressor(level=19)
    rows = []
    for name, a in onnx_tensors(onnx_path).items():
        if a.size == 0 or a.dtype == object:
            continue
        e = dcformat.encode(name, a)
        fp = dcformat.encode(name, a, encoding="float-planes").nbytes if a.dtype.kind == "f" else None
        distinct = np.unique(np.ascontiguousarray(a).view(f"u{a.itemsize}")).size if a.dtype.kind == "f" else None
        rows.append((e.nbytes - len(z.compress(np.ascontiguousarray(a).tobytes())), name, str(a.dtype), a.size, distinct,
                     a.nbytes, e.encoding, e.nbytes, fp))
    rows.sort(key=lambda r: (-r[5], r[1]))
    print("| tensor | dtype | elements | distinct | raw B | encoding | .dcz B | float-planes B | zstd -19 B | .dcz / zstd |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for loss, name, dt, n, distinct, raw, enc, nb, fp in rows[:top]:
        print(f"| {name} | {dt} | {n} | {distinct if distinct is not None else '—'} | {raw} | {enc} | {nb} | "
              f"{fp if fp is not None else '—'} | {nb - loss} | {nb / (nb - loss):.3f} |")
    print(f"\n{len(rows)} tensors: .dcz sections {sum(r[7] for r in rows)} B, zstd -19 per tensor "
          f"{sum(r[7] - r[0] for r in rows)} B, raw {sum(r[5] for r in rows)} B; "
          f"zstd smaller on {sum(r[0] > 0 for r in rows)}")


def measure(label: str, onnx_path: str, work: str, args) -> dict:
    import zstandard

    import dcformat

    tag = os.path.splitext(os.path.basename(onnx_path))[0]
    dcz = os.path.join(work, f"{tag}.lossless.dcz")
    log(f"{label}: dcconvert --lossless")
    t = time.perf_counter()
    exe = os.path.join(os.path.dirname(sys.executable), "dcconvert")
    subprocess.run([exe, onnx_path, "-o", dcz, "--lossless", "-q"], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": ROOT})
    conv_s = time.perf_counter() - t
    ntensors, nplanes = same_weights(onnx_path, dcz)
    row = {"model": label, "onnx": os.path.getsize(onnx_path), "dcz": os.path.getsize(dcz), "convert_s": conv_s,
           "tensors": ntensors, "float_planes_tensors": nplanes}
    log(f"{label}: zstd -19")
    zst = os.path.join(work, f"{tag}.onnx.zst")
    row["zstd19"] = compressed(["zstd", "-19", "-q", "-c", "-T1"], onnx_path, zst)
    if not args.no_xz:
        log(f"{label}: xz -9e")
        row["xz9e"] = compressed(["xz", "-9e", "-c", "-T1"], onnx_path, os.path.join(work, f"{tag}.onnx.xz"))
    log(f"{label}: zipnn")
    z = zipnn(args.zipnn_python, onnx_path, float_dtype(dcz))
    row["zipnn"] = z["bytes"] if z else None
    d = zstandard.ZstdDecompressor()

    def unzstd():
        with open(zst, "rb") as f:
            return d.decompress(f.read())

    # best of --repeat alternating runs (after a warm-up of each: numba kernels, page cache)
    row["decode_dcz_s"], row["decode_zstd_s"] = best_pair(lambda: dcformat.load_weights(dcz), unzstd, args.repeat)
    row["open_dcz_s"] = best(lambda: dcformat.open(dcz).close(), args.repeat)
    row["zstd_cli_s"] = best(lambda: subprocess.run(["zstd", "-d", "-q", "-c", zst], stdout=subprocess.DEVNULL, check=True),
                             args.repeat)
    row["zipnn_decode_s"] = z["decode_s"] if z else None
    return row


def measure_decode(label: str, onnx_path: str, work: str, args) -> list[dict]:
    """--decode-only: the decode timings alone, of the .dcz and .zst files an earlier run left in ``work``,
    one row per decoder of --decoder (both: numba, numba with decode_tensor for each tensor (the path before
    decode.decode_records: the baseline of its gain), then numpy, in this process)."""
    import zstandard

    import dcformat

    tag = os.path.splitext(os.path.basename(onnx_path))[0]
    dcz, zst = os.path.join(work, f"{tag}.lossless.dcz"), os.path.join(work, f"{tag}.onnx.zst")
    for f in (dcz, zst):
        if not os.path.exists(f):
            raise SystemExit(f"--decode-only: {f} is missing; run once without --decode-only first")
    d = zstandard.ZstdDecompressor()

    def unzstd():
        with open(zst, "rb") as f:
            return d.decompress(f.read())

    from dcformat import decode

    rows = []
    records = decode.decode_records
    for decoder in (("numba", "numba per tensor", "numpy") if args.decoder == "both" else (args.decoder,)):
        if decoder:
            os.environ["DCZ_DECODER"] = decoder.split()[0]
        # "numba per tensor": the numba decoder as it was before decode_records, decode_tensor for each tensor
        decode.decode_records = records if decoder != "numba per tensor" else (
            lambda batch, span=None: {i.name: decode.decode_tensor(i, s) for i, s in batch})
        row = {"model": label, "dcz": os.path.getsize(dcz)}
        row["decode_dcz_s"], row["decode_zstd_s"] = best_pair(lambda: dcformat.load_weights(dcz), unzstd, args.repeat)
        row["open_dcz_s"] = best(lambda: dcformat.open(dcz).close(), args.repeat)
        with dcformat.open(dcz) as r:  # the tensors alone (read, checksummed, decoded), of a file already open
            names = list(r)
            row["tensors_dcz_s"] = best(lambda: r.decode_many(names), args.repeat)
        row["tensors"] = len(names)
        row["decoder"] = decoder or ("numba" if "dcformat.kernels" in sys.modules else "numpy")
        rows.append(row)
    decode.decode_records = records
    return rows


def decode_table(rows: list[dict]) -> str:
    head = ["model", ".dcz --lossless", "tensors", "decoder", "decode .dcz", "of which open", "tensors alone",
            "zstd -d (library)", "decode speed vs zstd -d", "tensors alone vs zstd -d"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], mb(r["dcz"]), str(r["tensors"]), r["decoder"], f"{r['decode_dcz_s'] * 1e3:.2f} ms",
            f"{r['open_dcz_s'] * 1e3:.2f} ms", f"{r['tensors_dcz_s'] * 1e3:.2f} ms",
            f"{r['decode_zstd_s'] * 1e3:.2f} ms", f"{r['decode_zstd_s'] / r['decode_dcz_s']:.2f}x",
            f"{r['decode_zstd_s'] / r['tensors_dcz_s']:.2f}x"]) + " |")
    return "\n".join(lines)


def mb(n) -> str:
    return "—" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB")


def table(rows: list[dict]) -> str:
    head = ["model", "ONNX", ".dcz --lossless", "zstd -19", "xz -9e", "ZipNN", ".dcz vs zstd -19",
            "decode .dcz", "of which open", "zstd -d (library)", "decode speed vs zstd -d", "zstd -d (command)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        xz = r.get("xz9e")
        lines.append("| " + " | ".join([
            r["model"], mb(r["onnx"]), f"{mb(r['dcz'])} ({r['onnx'] / r['dcz']:.3f}x)",
            f"{mb(r['zstd19'])} ({r['onnx'] / r['zstd19']:.3f}x)",
            f"{mb(xz)} ({r['onnx'] / xz:.3f}x)" if xz else "—",
            f"{mb(r['zipnn'])} ({r['onnx'] / r['zipnn']:.3f}x)" if r["zipnn"] else "—",
            f"{r['dcz'] / r['zstd19']:.3f}",
            f"{r['decode_dcz_s'] * 1e3:.1f} ms", f"{r['open_dcz_s'] * 1e3:.1f} ms", f"{r['decode_zstd_s'] * 1e3:.1f} ms",
            f"{r['decode_zstd_s'] / r['decode_dcz_s']:.2f}x", f"{r['zstd_cli_s'] * 1e3:.1f} ms",
        ]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/dcz-bench-lossless", help="cache of models and compressed files")
    ap.add_argument("--quick", action="store_true", help="a 1/8-width CNN and the small transformer; no xz")
    ap.add_argument("--no-xz", action="store_true", help="skip xz -9e (slow on large files)")
    ap.add_argument("--no-wheels", action="store_true", help="skip the pretrained models from PyPI wheels")
    default_zipnn = os.path.join(ROOT, ".venv-bench", "bin", "python")
    ap.add_argument("--zipnn-python", default=default_zipnn if os.path.exists(default_zipnn) else None,
                    help="python of a venv with zipnn installed (default .venv-bench/bin/python if present)")
    ap.add_argument("--repeat", type=int, default=5, help="decode timings: best of this many")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--per-tensor", metavar="ONNX", help="only: each tensor of this ONNX file, .dcz against zstd -19")
    ap.add_argument("--top", type=int, default=10, help="--per-tensor: rows to print")
    ap.add_argument("--decode-only", action="store_true",
                    help="only the decode timings, of the files an earlier run left in --work (no conversion, "
                         "no zstd/xz/ZipNN)")
    ap.add_argument("--decoder", choices=("numba", "numpy", "both"),
                    help="force dcformat's decoder (DCZ_DECODER); both: --decode-only measures each (numba, numba "
                         "with one decode_tensor per tensor as before decode_records, numpy) in this run; default: as dcformat picks it (the numpy decoder until about "
                         "NUMBA_START_S of numpy decoding, then numba)")
    ap.add_argument("--models", help="only these models: comma-separated words of their labels or file names "
                                     "(cnn, transformer, det, rec, cls, silero, half ...)")
    ap.add_argument("--build-transformer", nargs=2, metavar=("PATH", "QUICK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decoder in ("numba", "numpy"):
        os.environ["DCZ_DECODER"] = args.decoder
    elif args.decoder and not args.decode_only:
        ap.error("--decoder both needs --decode-only")
    if args.build_transformer:
        _export_transformer(args.build_transformer[0], args.build_transformer[1] == "1")
        return 0
    if args.per_tensor:
        per_tensor(args.per_tensor, args.top)
        return 0
    args.no_xz = args.no_xz or args.quick
    os.makedirs(args.work, exist_ok=True)
    want = set(args.models.lower().split(",")) if args.models else None

    def chosen(label: str, path: str = "") -> bool:
        return want is None or bool(want & set(re.split(r"[^a-z0-9]+", f"{label} {os.path.basename(path)}".lower())))

    models = []
    cnn = "CNN " + ("(3.9M" if args.quick else "(25M") + ", random)"
    if chosen(cnn):
        models.append((cnn, build_cnn(args.work, 0.125 if args.quick else 1.0)))
    if chosen("Transformer encoder (random)"):
        models.append(("Transformer encoder (random)", build_transformer(args.work, args.quick)))
    if not args.no_wheels:
        models += [(label, path) for label, path in wheel_models(args.work) if chosen(label, path)]
    if not models:
        ap.error(f"--models {args.models}: no model matches")
    if args.decode_only:
        rows = [row for label, path in models for row in measure_decode(label, path, args.work, args)]
        print(decode_table(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        faster = all(r["decode_dcz_s"] <= r["decode_zstd_s"] for r in rows)
        print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; decodes no slower than zstd -d on "
              f"every model: {faster}")
        return 0
    rows = [measure(label, path, args.work, args) for label, path in models]
    print(table(rows))
    smaller = all(r["dcz"] < r["zstd19"] for r in rows)
    faster = all(r["decode_dcz_s"] <= r["decode_zstd_s"] for r in rows)
    print(f"\nsmaller than zstd -19 on every model: {smaller}; decodes no slower than zstd -d on every model: {faster}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
