#!/usr/bin/env python3
"""Benchmarks against what users would pick instead; regenerates BENCHMARKS.md.

Measured side by side in one run, on the same models:

* size: the .dcz against the fp32 ONNX, ONNX + zstd -19, ONNX + xz -9e, np.savez_compressed
  of the weights, ONNX Runtime's dynamic int8 quantization (and that file + zstd -19), and
  NNCodec (run from its own virtual environment, --nncodec-python);
* accuracy on the Fashion-MNIST test set (LeNets; all run in ONNX Runtime) and the relative
  output error against the fp32 model (every model, a fixed random batch);
* the Huffman bound: bytes of each stored stream (gaps, indices) against the empirical
  entropy of its symbols, decoded from the file;
* speed: decode to dense weights against zstd -d of the ONNX, .dcz -> ORT session against
  .onnx -> session, inference latency (full and compact mode), conversion time over a few
  model sizes;
* memory: peak RSS of a session, full and compact, each in a fresh process.

Models: LeNet-300-100 and LeNet-5 trained on Fashion-MNIST and compressed by
converters.pipeline.deep_compress (cached in --work); a ~25M-parameter CNN and a small
transformer encoder (random weights) compressed with dcconvert defaults.

    .venv/bin/python tools/bench.py --work /tmp/dcz-bench            # full run, writes BENCHMARKS.md
    .venv/bin/python tools/bench.py --quick --out /tmp/quick.md       # small sizes, < 3 minutes
"""

from __future__ import annotations

import argparse
import datetime
import json
import lzma
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

CPU = ["CPUExecutionProvider"]
FASHION = "/usr/share/datasets/fashion-mnist"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def best(fn, n: int) -> float:
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def err_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def fsize(p: str) -> int:
    return os.path.getsize(p)


# ------------------------------------------------------------------------------------------ models


def _threads():
    import torch

    torch.set_num_threads(1)
    return torch


def lenet(kind: str, work: str, quick: bool) -> dict:
    """Train (or reuse) a LeNet on Fashion-MNIST: the dense fp32 ONNX and the pipeline's .dcz."""
    tag = f"{kind}{'-quick' if quick else ''}"
    onnx_p, dcz_p, meta_p = (os.path.join(work, f"{tag}{ext}") for ext in (".onnx", ".dcz", ".json"))
    pruned_p = os.path.join(work, f"{tag}.pruned.npz")
    if all(os.path.exists(p) for p in (onnx_p, dcz_p, meta_p, pruned_p)):
        log(f"{tag}: cached in {work}")
        return {**json.load(open(meta_p)), "onnx": onnx_p, "dcz": dcz_p, "pruned_npz": pruned_p}
    torch = _threads()
    import copy

    from converters import pipeline as pl
    from converters.data import load_idx_dir

    ds = load_idx_dir(FASHION)
    xtr, ytr = ds.x_train, ds.y_train
    xtr, ytr = xtr[: 6000 if quick else 30000], ytr[: 6000 if quick else 30000]  # the time budget
    evaluate = pl.accuracy_fn(ds.x_test, ds.y_test)
    torch.manual_seed(0)
    model = pl.lenet300() if kind == "lenet300" else pl.lenet5()
    epochs = 1 if quick else 3
    t = time.perf_counter()
    pl.train(model, (xtr, ytr), epochs, lr=1e-3, seed=0)
    t_train = time.perf_counter() - t
    dense = copy.deepcopy(model)
    onnx_model = pl.export_onnx(dense, (1, 28, 28))
    import onnx

    onnx.save(onnx_model, onnx_p)
    s = pl.Settings(schedule=(0.5, 1.0) if quick else (0.5, 0.8, 1.0), retrain_epochs=1,
                    finetune_epochs=1, seed=0)
    t = time.perf_counter()
    res = pl.deep_compress(model, (xtr, ytr), evaluate, s, out=dcz_p, input_shape=(1, 28, 28),
                           dataset="fashion-mnist test")
    t_compress = time.perf_counter() - t
    np.savez(pruned_p, **{k: v.detach().numpy() for k, v in res.model.state_dict().items()})
    meta = {"name": "LeNet-300-100" if kind == "lenet300" else "LeNet-5", "kind": kind, "dataset": True,
            "params": res.params, "train_seconds": t_train, "pipeline_seconds": t_compress,
            "torch_accuracy": res.accuracy, "plan": res.plan, "epochs": epochs, "settings": res.settings,
            "train_samples": int(len(xtr))}
    json.dump(meta, open(meta_p, "w"), indent=1)
    log(f"{tag}: trained {t_train:.0f} s, pipeline {t_compress:.0f} s, accuracy {res.accuracy}")
    return {**meta, "onnx": onnx_p, "dcz": dcz_p, "pruned_npz": pruned_p}


def dcconvert(src: str, out: str, extra=()) -> dict:
    """dcconvert with its defaults in a fresh process; the report plus the process wall time."""
    exe = os.path.join(os.path.dirname(sys.executable), "dcconvert")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-c", "from converters.cli import main; main()"]
    t = time.perf_counter()
    p = subprocess.run([*cmd, src, "-o", out, "--json", *extra], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"dcconvert failed: {p.stderr.strip()[-500:]}")
    r = json.loads(p.stdout)
    return {"seconds": r["seconds"], "process_seconds": wall, "report": r}


def converted(tag: str, onnx_p: str, dcz_p: str, meta_p: str) -> dict:
    """dcconvert (defaults) onnx_p -> dcz_p unless cached; its timing and parameter count (meta_p)."""
    if not (os.path.exists(dcz_p) and os.path.exists(meta_p)):
        log(f"{tag}: dcconvert (defaults)")
        c = dcconvert(onnx_p, dcz_p)
        json.dump({"convert_seconds": c["seconds"], "convert_process_seconds": c["process_seconds"],
                   "params": c["report"]["totals"]["params"]}, open(meta_p, "w"))
    return json.load(open(meta_p))


def cnn(work: str, scale: float, tag: str) -> dict:
    from bench_convert import build_cnn

    onnx_p, dcz_p, meta_p = (os.path.join(work, f"{tag}{ext}") for ext in (".onnx", ".dcz", ".json"))
    if not os.path.exists(onnx_p):
        # built in a child, so that this process stays small for the memory measurements' sake
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_convert.py"), "--build", onnx_p, str(scale)],
                       check=True, capture_output=True, text=True)
    meta = converted(tag, onnx_p, dcz_p, meta_p)
    del build_cnn
    return {"name": f"CNN ({meta['params'] / 1e6:.1f}M, random)", "kind": "cnn", "dataset": False, "onnx": onnx_p,
            "dcz": dcz_p, **meta}


def transformer(work: str, quick: bool) -> dict:
    tag = "transformer" + ("-quick" if quick else "")
    onnx_p, dcz_p, meta_p = (os.path.join(work, f"{tag}{ext}") for ext in (".onnx", ".dcz", ".json"))
    d, layers, ff = (128, 2, 512) if quick else (256, 4, 1024)
    if not os.path.exists(onnx_p):
        torch = _threads()
        from torch import nn

        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d, 8, ff, dropout=0.0, batch_first=True)
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        with torch.no_grad():  # the layers are deep copies of one: give each its own weights (else the
            for name, p in model.named_parameters():  # exporter shares the identical initializers)
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                elif "norm" not in name:
                    nn.init.normal_(p, std=0.02)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 64, d),), onnx_p, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})
    meta = converted(tag, onnx_p, dcz_p, meta_p)
    return {"name": f"Transformer encoder ({layers}x d{d}, {meta['params'] / 1e6:.1f}M, random)", "kind": "transformer",
            "dataset": False, "onnx": onnx_p, "dcz": dcz_p, "seq": 64, "d_model": d, **meta}


# ------------------------------------------------------------------------------------------ helpers


def initializers(path: str) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def with_weights(onnx_path: str, weights: dict, out: str) -> str:
    """The ONNX model with some initializers replaced (by name)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(np.asarray(weights[t.name], dtype=numpy_helper.to_array(t).dtype)
                                               .reshape(tuple(t.dims)), t.name))
    onnx.save(m, out)
    return out


def feeds_for(m: dict, batch: int = 1) -> dict:
    rng = np.random.default_rng(batch)
    if m["kind"] in ("lenet300", "lenet5"):
        return {"input": rng.random((batch, 28, 28), dtype=np.float32)}
    if m["kind"] == "cnn":
        return {"input": rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)}
    return {"input": rng.standard_normal((batch, m["seq"], m["d_model"]), dtype=np.float32)}


def run_all(sess, feeds):
    return sess.run(None, feeds)[0]


def rel_err(y, ref) -> float:
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def accuracy(sess, x, y) -> float:
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i : i + 2000]})[0].argmax(1) for i in range(0, len(x), 2000)])
    return float((pred == y).mean() * 100)


def session(path_or_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, sess_options=so, providers=CPU)


def dcz_session(path, compact=False):
    import onnxruntime as ort

    import dcformat

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if compact:
        so.enable_cpu_mem_arena = False
    return dcformat.InferenceSession(path, sess_options=so, compact=compact)


# ------------------------------------------------------------------------------------------ NNCodec


NNC_CHILD = r"""
import json, sys, time, numpy as np
qp, jobs = int(sys.argv[1]), sys.argv[2:]
from nncodec import nnc
for i in range(0, len(jobs), 3):  # (input .npz, bitstream, decoded .npz) per job; one process: torch imports once
    src, out_bs, out_npz = jobs[i : i + 3]
    w = dict(np.load(src))
    t = time.perf_counter()
    nnc.compress(w, bitstream_path=out_bs, qp=qp, use_dq=True, return_bitstream=False)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    rec = nnc.decompress(out_bs, return_model_information=False)
    t_dec = time.perf_counter() - t
    np.savez(out_npz, **{k: np.asarray(v, dtype=np.float32) for k, v in rec.items()})
    print("NNC " + json.dumps({"job": i // 3, "encode_seconds": t_enc, "decode_seconds": t_dec}), flush=True)
"""


def nncodec(python: str, jobs: list, work: str, qp: int) -> list[dict]:
    """NNCodec (ISO/IEC 15938-17, DeepCABAC) on float weights, in its own venv, one process for all
    (tag, weights) jobs; per job {'bytes', 'weights', ...} or {'error'}."""
    if not python or not os.path.exists(python):
        return [{"error": f"no NNCodec interpreter at {python!r} (see --nncodec-python)"}] * len(jobs)
    files = []
    for tag, weights in jobs:
        src, bs, dec = (os.path.join(work, f"{tag}{ext}") for ext in (".nnc-in.npz", ".nnc", ".nnc-out.npz"))
        np.savez(src, **{k: np.asarray(v, np.float32) for k, v in weights.items()})
        files.append((src, bs, dec))
    p = subprocess.run([python, "-c", NNC_CHILD, str(qp), *[f for t in files for f in t]], capture_output=True,
                       text=True, timeout=900)
    done = {}
    for ln in p.stdout.splitlines():
        if ln.startswith("NNC "):
            r = json.loads(ln[4:])
            done[r["job"]] = r
    tail = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
    error = {"error": (tail[-1] if tail else f"exit {p.returncode}")[:300]}
    out = []
    for i, (_, bs, dec) in enumerate(files):
        if i not in done:
            out.append(error)
            continue
        out.append({**done[i], "bytes": fsize(bs), "weights": dict(np.load(dec))})
    return out


# ------------------------------------------------------------------------------------------ measurements


def sizes(m: dict, work: str, nnc_python: str, nnc_qp: int, ds) -> list[dict]:
    """One row per representation: bytes, ratio to the fp32 ONNX, compression seconds, accuracy, output error."""
    import onnx
    import zstandard
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tag = os.path.splitext(os.path.basename(m["onnx"]))[0]
    onnx_bytes = open(m["onnx"], "rb").read()
    base = len(onnx_bytes)
    feeds = feeds_for(m, 8)
    ref_sess = session(m["onnx"])
    ref = run_all(ref_sess, feeds)
    rows = []

    def row(label, nbytes, seconds, sess=None, lossless=False, note="", error=None):
        r = {"label": label, "bytes": nbytes, "ratio": base / nbytes if nbytes else None, "seconds": seconds,
             "note": note, "error": error}
        if sess is not None:
            retrained = ds is not None and (label.startswith(".dcz") or "pruned" in label)  # another model's logits
            r["rel_err"] = None if retrained else rel_err(run_all(sess, feeds), ref)
            if ds is not None:
                r["accuracy"] = accuracy(sess, ds.x_test, ds.y_test)
        elif lossless:
            r["rel_err"] = 0.0
            r["accuracy"] = rows[0].get("accuracy") if rows else None
        rows.append(r)
        return r

    row("fp32 ONNX", base, None, ref_sess)
    log(f"{tag}: zstd -19")
    t = time.perf_counter()
    zst = zstandard.ZstdCompressor(level=19).compress(onnx_bytes)
    row("ONNX + zstd -19", len(zst), time.perf_counter() - t, lossless=True)
    open(os.path.join(work, f"{tag}.onnx.zst"), "wb").write(zst)
    log(f"{tag}: xz -9e")
    t = time.perf_counter()
    xz = lzma.compress(onnx_bytes, preset=9 | lzma.PRESET_EXTREME)
    row("ONNX + xz -9e", len(xz), time.perf_counter() - t, lossless=True)
    del xz
    w = initializers(m["onnx"])
    t = time.perf_counter()
    npz = os.path.join(work, f"{tag}.weights.npz")
    np.savez_compressed(npz, **w)
    row("np.savez_compressed (weights only)", fsize(npz), time.perf_counter() - t, lossless=True)

    log(f"{tag}: ORT quantize_dynamic int8")
    q8 = os.path.join(work, f"{tag}.int8.onnx")
    note = ""
    try:
        t = time.perf_counter()
        import logging

        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(m["onnx"], q8, weight_type=QuantType.QInt8)
        tq = time.perf_counter() - t
        try:
            qs = session(q8)
            run_all(qs, feeds)
        except Exception as e:  # noqa: BLE001 - ORT CPU lacks ConvInteger for int8 weights
            note = f"default op types fail to run ({err_line(e)}); Conv left fp32 (op_types_to_quantize MatMul, Gemm)"
            t = time.perf_counter()
            quantize_dynamic(m["onnx"], q8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            tq = time.perf_counter() - t
            qs = session(q8)
        row("ORT quantize_dynamic int8", fsize(q8), tq, qs, note=note)
        qb = open(q8, "rb").read()
        t = time.perf_counter()
        qz = zstandard.ZstdCompressor(level=19).compress(qb)
        row("ORT int8 + zstd -19", len(qz), tq + time.perf_counter() - t, lossless=True, note="accuracy as int8")
        rows[-1]["accuracy"], rows[-1]["rel_err"] = rows[-2].get("accuracy"), rows[-2].get("rel_err")
    except Exception as e:  # noqa: BLE001
        row("ORT quantize_dynamic int8", None, None, error=err_line(e))

    # NNCodec: on the dense weights; for the LeNets also on the pipeline's pruned + shared weights
    inputs = [("NNCodec (dense fp32 weights)", w)]
    if m.get("pruned_npz"):
        pruned = dict(np.load(m["pruned_npz"]))
        names = {k for k in w}
        inputs.append(("NNCodec (pruned + shared, the .dcz's weights)", {k: v for k, v in pruned.items() if k in names}))
    log(f"{tag}: NNCodec")
    subs = ["dense" if "dense" in label else "pruned" for label, _ in inputs]
    results = nncodec(nnc_python, [(f"{tag}.{sub}", w_) for sub, (_, w_) in zip(subs, inputs)], work, nnc_qp)
    for (label, weights), sub, r in zip(inputs, subs, results):
        if "error" in r:
            row(label, None, None, error=r["error"])
            continue
        try:
            p = with_weights(m["onnx"], r["weights"], os.path.join(work, f"{tag}.{sub}.nnc.onnx"))
            row(label, r["bytes"], r["encode_seconds"], session(p), note=f"qp {nnc_qp}, decode {r['decode_seconds']:.2f} s")
        except Exception as e:  # noqa: BLE001
            row(label, r["bytes"], r["encode_seconds"], error=f"decoded weights do not run: {err_line(e)}")

    if m["dataset"]:
        conv = m["pipeline_seconds"]  # measured when the model was trained (cached with it)
    else:  # timed again in this run, like the baselines
        log(f"{tag}: dcconvert (timed)")
        conv = dcconvert(m["onnx"], os.path.join(work, f"{tag}.again.dcz"))["seconds"]
    row(".dcz (Deep Compression)", fsize(m["dcz"]), conv, dcz_session(m["dcz"]),
        note="pipeline: train-prune-retrain-share-finetune" if m["dataset"] else "dcconvert defaults, no retraining")
    return rows


def huffman(m: dict) -> dict:
    from bench_lenet300 import huffman_bound

    b = huffman_bound(m["dcz"])
    agg = {}
    for r in b["rows"]:
        for s in r["streams"]:
            if not s["symbols"]:
                continue
            a = agg.setdefault(s["part"], {"symbols": 0, "entropy": 0.0, "huffman": 0.0, "stored": 0, "tensors": 0})
            a["symbols"] += s["symbols"]
            a["entropy"] += s["entropy_bits"] / 8
            a["huffman"] += s["huffman_bits"] / 8
            a["stored"] += s["stored_bytes"]
            a["tensors"] += 1
    return {"streams": agg, "file": b["file"], "bound": b["bound"], "codebook": b["codebook_bytes"], "raw": b["raw_bytes"],
            "overhead": b["overhead"]}


def speed(m: dict, work: str, n: int, runs: int) -> dict:
    import zstandard

    import dcformat

    tag = os.path.splitext(os.path.basename(m["onnx"]))[0]
    zst = open(os.path.join(work, f"{tag}.onnx.zst"), "rb").read()
    d = zstandard.ZstdDecompressor()
    dcformat.load_weights(m["dcz"])  # warm: numba kernels, page cache
    r = {"decode_dcz": best(lambda: dcformat.load_weights(m["dcz"]), n),
         "zstd_d": best(lambda: d.decompress(zst), n)}
    r["session_onnx"] = best(lambda: session(m["onnx"]), n)
    r["session_dcz"] = best(lambda: dcz_session(m["dcz"]), n)
    r["session_compact"] = best(lambda: dcz_session(m["dcz"], True), n)
    feeds = feeds_for(m, 1)
    sess = {"onnx": session(m["onnx"]), "dcz": dcz_session(m["dcz"]), "compact": dcz_session(m["dcz"], True)}
    lat = {}
    for _ in range(2):  # interleaved rounds, the best median kept
        for k, s in sess.items():
            k_runs = runs if k != "compact" else max(5, runs // 5)
            for _ in range(2):
                s.run(None, feeds)
            ts = []
            for _ in range(k_runs):
                t = time.perf_counter()
                s.run(None, feeds)
                ts.append(time.perf_counter() - t)
            lat[k] = min(lat.get(k, float("inf")), statistics.median(ts))
    r.update({f"lat_{k}": v for k, v in lat.items()})
    return r


MEM_CHILD = r"""
import gc, json, sys
import numpy as np
import onnxruntime as ort
import dcformat

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out

kind, path, warm = sys.argv[1], sys.argv[2], sys.argv[3]
dcformat.load_weights(warm)  # numba's compiled kernels: loaded once per process, whatever the model
gc.collect()
s0 = status()
so = ort.SessionOptions()
so.intra_op_num_threads = 1
if kind == "onnx":
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
else:
    if kind == "compact":
        so.enable_cpu_mem_arena = False
    s = dcformat.InferenceSession(path, sess_options=so, compact=kind == "compact")
gc.collect()
s1 = status()
print(json.dumps({"base": s0["VmRSS"], "session": s1["VmRSS"] - s0["VmRSS"], "peak": s1["VmHWM"] - s0["VmRSS"]}))
"""


def warm_file(work: str) -> str:
    import dcformat

    p = os.path.join(work, "warm.dcz")
    if not os.path.exists(p):
        rng = np.random.default_rng(0)
        cb = np.array([0.0, -0.5, 0.5, 0.1], np.float32)
        idx = np.where(rng.random((64, 64)) < 0.9, 0, rng.integers(1, 4, (64, 64)))
        dcformat.write(p, [dcformat.encode_codebook("a", cb, idx, encoding="codebook-sparse"),
                           dcformat.encode_codebook("b", cb, rng.integers(0, 4, (64, 64)), encoding="codebook-dense")])
    return p


def memory(m: dict, work: str) -> dict:
    out = {}
    for kind in ("onnx", "dcz", "compact"):
        p = subprocess.run([sys.executable, "-c", MEM_CHILD, kind, m["onnx"] if kind == "onnx" else m["dcz"], warm_file(work)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        if p.returncode:
            out[kind] = {"error": p.stderr.strip().splitlines()[-1][:300]}
        else:
            out[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def convert_growth(work: str, scales, have: dict, repeat: int) -> list[dict]:
    rows = []
    for s in scales:
        tag = f"cnn-x{s:g}"
        m = have.get(tag) or cnn(work, s, tag)
        runs = [dcconvert(m["onnx"], os.path.join(work, f"{tag}.again.dcz")) for _ in range(repeat)]
        rows.append({"scale": s, "params": m["params"], "seconds": min(r["seconds"] for r in runs),
                     "process_seconds": min(r["process_seconds"] for r in runs), "onnx": fsize(m["onnx"]),
                     "dcz": fsize(m["dcz"]), "repeat": repeat})
    return rows


# ------------------------------------------------------------------------------------------ report


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {"python": platform.python_version()}
    for mod in ("numpy", "onnx", "onnxruntime", "numba", "zstandard", "torch", "dcformat"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            vers[mod] = "not installed"
    try:
        aff = len(os.sched_getaffinity(0))
    except AttributeError:
        aff = os.cpu_count()
    return {"cpu": cpu, "cpus": os.cpu_count(), "affinity": aff, "versions": vers, "platform": platform.platform(),
            "load": os.getloadavg()}


def mb(n) -> str:
    return "—" if n is None else (f"{n / 1e6:,.2f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB")


def md_table(cols, rows) -> str:
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if i == 0 or c in ("notes", "stream") else "---:" for i, c in enumerate(cols)) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def ms(s) -> str:
    return "—" if s is None else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def render(res: dict) -> str:
    env, a = res["machine"], res["args"]
    L = []
    L.append("# Benchmarks: .dcz against what you would use instead\n")
    L.append("Why not zstd the ONNX file, or int8-quantize it? This page answers with numbers measured side by side "
             "in one run of [`tools/bench.py`](tools/bench.py), the baselines and `.dcz` on the same models:\n\n"
             "* **LeNet-300-100** and **LeNet-5**, trained on Fashion-MNIST here and compressed by the full Deep "
             "Compression pipeline (`converters.pipeline.deep_compress`: prune with retraining, k-means weight sharing "
             "with centroid fine-tuning, Huffman coding). The baselines get the *dense* trained fp32 model; NNCodec "
             "gets both the dense model and the pipeline's pruned + weight-shared weights (the ones the `.dcz` holds).\n"
             "* a **CNN** with about 25M parameters and a small **transformer encoder** "
             "(`torch.nn.TransformerEncoder`, exported with `torch.onnx.export(dynamo=False)`, opset 17), both with "
             "random weights, compressed by `dcconvert` with its defaults ("
             f"{res['dcconvert_defaults']}) *without* retraining: there is no data for them, so only sizes, speed and the output error "
             "against the fp32 model are meaningful.\n\n"
             "Accuracy is top-1 on the Fashion-MNIST test set (10,000 images), every model run in ONNX Runtime "
             "(the `.dcz` through `dcformat.InferenceSession`). *Output error* is ‖y − y_fp32‖ / ‖y_fp32‖ on a fixed "
             "random batch of 8 (not shown for the LeNets' `.dcz`: it "
             "is a retrained model, whose logits legitimately differ; its accuracy is what counts). Timings are best-of-N (latency: median of N runs, best of 2 interleaved rounds) "
             "in one process, ONNX Runtime with one intra-op thread; ratios are printed next to them.\n")
    L.append("Rerun (results are cached in `--work`, so a rerun skips training and conversion):\n")
    L.append("```bash\n" + res["command"] + "\n```\n")
    L.append(f"Generated {res['date']} in {res['runtime']:.0f} s{' (QUICK mode: small sizes)' if a['quick'] else ''} on "
             f"{env['cpu']}, {env['cpus']} CPUs ({env['affinity']} usable), load average at start "
             f"{env['load'][0]:.1f} (other jobs were running), {env['platform']}; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; NNCodec: {res['nncodec_version']}.\n")

    L.append("## Size and accuracy\n")
    L.append("*x smaller* is the fp32 ONNX file size divided by the row's size. *time* is the compression time "
             "(for the `.dcz` of the LeNets: the whole pipeline including retraining, "
             "timed when the model was trained; for the others: `dcconvert` from the ONNX file, in this run). Lossless rows (zstd, xz, savez) have the fp32 model's accuracy by construction.\n")
    for m in res["models"]:
        L.append(f"### {m['name']}: {m['params']:,} parameters\n")
        rows = []
        for r in m["sizes"]:
            if r.get("error"):
                rows.append([r["label"], "—", "—", "—", "—", "—", f"**failed:** `{r['error']}`"])
                continue
            acc = r.get("accuracy")
            rows.append([r["label"], mb(r["bytes"]), f"{r['ratio']:.1f}x" if r["ratio"] else "—",
                         "—" if acc is None else f"{acc:.2f}%",
                         "—" if r.get("rel_err") is None else (f"{r['rel_err']:.1e}" if r["rel_err"] else "0 (lossless)"),
                         ms(r["seconds"]) if r["seconds"] is not None else "—", r.get("note") or ""])
        L.append(md_table(["representation", "size", "x smaller", "accuracy", "output error", "time", "notes"], rows) + "\n")
        if m.get("torch_accuracy"):
            t = m["torch_accuracy"]
            L.append(f"Pipeline accuracy in PyTorch: dense {t['dense']:.2f}%, pruned {t['pruned']:.2f}%, "
                     f"weight-shared {t['quantized']:.2f}%, after centroid fine-tuning {t['compressed']:.2f}% "
                     f"({m['epochs']} dense epochs on {m['train_samples']:,} images; sparsity/bits per layer: "
                     + ", ".join(f"{k} {p['achieved_sparsity']:.0%}/{p['bits']}b" for k, p in m["plan"].items()) + ").\n")

    L.append("## Huffman coding against the entropy bound\n")
    L.append("Each `.dcz` stream (the relative-position *gaps* of sparse layers and the codebook *indices*) decoded "
             "from the file with `dcformat.streams.parse_stream` and the decode kernel; *entropy* is symbols × "
             "the empirical (order-0) entropy of that stream / 8, per tensor, summed; *Huffman* is the ideal "
             "Huffman code for those counts; *stored* is the bytes in the file (code tables, lane offsets and "
             "padding included).\n")
    rows = []
    for m in res["models"]:
        h = m["huffman"]
        for part, s in sorted(h["streams"].items()):
            rows.append([m["name"], part, s["tensors"], f"{s['symbols']:,}", f"{s['entropy']:,.0f}", f"{s['huffman']:,.0f}",
                         f"{s['stored']:,}", f"{s['stored'] / s['entropy']:.3f}" if s["entropy"] else "—"])
        rows.append([m["name"], "**whole file** vs entropy + codebooks + raw tensors", "", "", f"{h['bound']:,.0f}", "",
                     f"{h['file']:,}", f"{h['file'] / h['bound']:.3f}"])
    L.append(md_table(["model", "stream", "tensors", "symbols", "entropy B", "Huffman B", "stored B", "stored / entropy"],
                      rows) + "\n")

    L.append("## Speed\n")
    rows = []
    for m in res["models"]:
        s = m["speed"]
        rows.append([m["name"], ms(s["decode_dcz"]), ms(s["zstd_d"]), f"{s['decode_dcz'] / s['zstd_d']:.2f}",
                     ms(s["session_dcz"]), ms(s["session_onnx"]), f"{s['session_dcz'] / s['session_onnx']:.2f}",
                     ms(s["session_compact"])])
    L.append(f"Loading (best of {a['repeat']}). *decode*: `dcformat.load_weights` (every tensor to dense numpy) "
             "against zstandard decompressing the zstd -19 ONNX file in memory; *session*: "
             "`dcformat.InferenceSession(model.dcz)` against `onnxruntime.InferenceSession(model.onnx)` from disk "
             "(page cache warm).\n")
    L.append(md_table(["model", "decode .dcz", "zstd -d .onnx", "ratio", ".dcz → session", ".onnx → session", "ratio",
                       "compact → session"], rows) + "\n")
    rows = []
    for m in res["models"]:
        s = m["speed"]
        rows.append([m["name"], ms(s["lat_onnx"]), ms(s["lat_dcz"]), f"{s['lat_dcz'] / s['lat_onnx']:.2f}",
                     ms(s["lat_compact"]), f"{s['lat_compact'] / s['lat_onnx']:.2f}"])
    L.append(f"Inference latency, batch 1 (median of {a['runs']} runs, compact mode {max(5, a['runs'] // 5)}). "
             "The decoded `.dcz` is the same graph with the same kind of weights as the ONNX file, so full mode "
             "should equal the ONNX baseline (its weights are the pruned, weight-shared ones, which does not change "
             "dense kernels' speed). Compact mode keeps uint8 indices and rebuilds each weight at every run.\n")
    L.append(md_table(["model", ".onnx", ".dcz full", "ratio", ".dcz compact", "ratio"], rows) + "\n")
    g = res["growth"]
    rows = []
    for r in g:
        rows.append([f"{r['params']:,}", mb(r["onnx"]), mb(r["dcz"]), f"{r['onnx'] / r['dcz']:.1f}x", f"{r['seconds']:.2f} s",
                     f"{r['process_seconds']:.2f} s", f"{r['seconds'] / (r['params'] / 1e6):.3f}"])
    L.append("Conversion time with `dcconvert` defaults over the CNN family (first fully connected layer widened), "
             f"best of {g[0].get('repeat', 1) if g else 1} fresh processes: *convert* is measured inside `dcconvert` (load, prune, k-means, Huffman, "
             "write), *process* includes Python start-up and imports.\n")
    L.append(md_table(["params", "fp32 ONNX", ".dcz", "x smaller", "convert", "process", "s / M params"], rows) + "\n")
    if len(g) >= 2:
        x = np.array([r["params"] for r in g], float)
        y = np.array([r["seconds"] for r in g], float)
        k, c = np.polyfit(x, y, 1)
        resid = y - (k * x + c)
        r2 = 1 - (resid ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
        L.append(f"Least-squares line: {k * 1e6:.3f} s per million parameters + {c:.2f} s, R² = {r2:.4f}; "
                 f"largest/smallest: {x[-1] / x[0]:.1f}x the parameters, {y[-1] / y[0]:.1f}x the time.\n")

    L.append("## Memory\n")
    L.append("Each in a fresh process: numpy, onnxruntime and dcformat imported and numba's kernels loaded "
             "(by decoding a tiny file), then the session is created. *peak* is VmHWM afterwards minus the RSS "
             "before creating the session; *held* is the RSS increase that stays.\n")
    rows = []
    for m in res["models"]:
        mm = m["memory"]
        cells = [m["name"]]
        for k in ("onnx", "dcz", "compact"):
            v = mm[k]
            cells += ["failed" if "error" in v else mb(v["peak"]), "—" if "error" in v else mb(v["session"])]
        ok = all("error" not in mm[k] for k in mm)
        cells.append(f"{mm['compact']['peak'] / mm['dcz']['peak']:.2f}" if ok and mm["dcz"]["peak"] > 0 else "—")
        rows.append(cells)
    L.append(md_table(["model", ".onnx peak", ".onnx held", ".dcz peak", ".dcz held", "compact peak", "compact held",
                       "compact / full peak"], rows) + "\n")
    L.append("## What this shows\n")
    L.append(res["interpretation"] + "\n")
    return "\n".join(L)


def interpretation(res: dict) -> str:
    """A few sentences drawn from the numbers of this run."""
    by = {m["kind"]: m for m in res["models"]}
    out = []

    def get(m, label):
        for r in m["sizes"]:
            if r["label"] == label and not r.get("error"):
                return r
        return None

    for kind in ("lenet300", "lenet5"):
        m = by.get(kind)
        if not m:
            continue
        d, z, q, qz = (get(m, lbl) for lbl in (".dcz (Deep Compression)", "ONNX + zstd -19", "ORT quantize_dynamic int8",
                                              "ORT int8 + zstd -19"))
        base = m["sizes"][0]
        s = (f"**{m['name']}**: the `.dcz` is {d['ratio']:.0f}x smaller than the fp32 ONNX file, "
             f"{z['bytes'] / d['bytes']:.1f}x smaller than zstd -19 of it")
        if q:
            s += f" and {q['bytes'] / d['bytes']:.1f}x smaller than ORT's int8 model"
            if qz:
                s += f" ({qz['bytes'] / d['bytes']:.1f}x than int8 + zstd)"
        s += (f", at {d['accuracy']:.2f}% accuracy against {base['accuracy']:.2f}% dense"
              + (f" and {q['accuracy']:.2f}% int8" if q and q.get("accuracy") is not None else "") + ". ")
        nd, npr = get(m, "NNCodec (dense fp32 weights)"), get(m, "NNCodec (pruned + shared, the .dcz's weights)")
        if nd and npr:
            s += (f"NNCodec (DeepCABAC) on the dense weights gives {nd['ratio']:.1f}x at {nd['accuracy']:.2f}%; on the "
                  f"*same* pruned, weight-shared weights it gives {npr['bytes'] / 1e3:.1f} kB "
                  f"({npr['bytes'] / d['bytes']:.2f}x the `.dcz`) at {npr['accuracy']:.2f}%: "
                  + ("the context-adaptive arithmetic coder is the better entropy coder here; "
                     if npr["bytes"] < d["bytes"] else "")
                  + "most of the gain is the pruning and weight sharing with retraining, not the final coder. ")
        out.append(s + "Lossless compressors barely help on fp32 weights (the low mantissa bits are close to noise).")
    for kind in ("cnn", "transformer"):
        m = by.get(kind)
        if not m:
            continue
        d, z, q, qz = (get(m, lbl) for lbl in (".dcz (Deep Compression)", "ONNX + zstd -19", "ORT quantize_dynamic int8",
                                              "ORT int8 + zstd -19"))
        s = (f"**{m['name']}** with `dcconvert` defaults and no retraining: {d['ratio']:.0f}x smaller than the fp32 "
             f"ONNX file, {z['bytes'] / d['bytes']:.1f}x smaller than its zstd")
        if q:
            s += f", {q['bytes'] / d['bytes']:.1f}x smaller than int8"
        s += (f"; but the output error is {d['rel_err']:.2f} (relative), "
              + (f"against {q['rel_err']:.3f} for int8" if q else "") + ". ")
        if kind == "transformer":
            s += ("Pruning and 5-bit sharing of every projection of a transformer *without retraining* (what "
                  "the defaults do) changes its function a lot: without retraining int8 (or NNCodec) is the safer "
                  "choice here; with `dcconvert` choose gentler settings (`--sparsity 0 --bits 8`, or "
                  "`--lossless`) or retrain with the pipeline.")
        else:
            s += ("The weights are random, so the error only says that one-shot pruning moves the outputs; with "
                  "a trained model, retrain (the pipeline) or check accuracy before shipping.")
        out.append(s)
    hb = [(m["name"], m["huffman"]) for m in res["models"]]
    st = [s["stored"] / s["entropy"] for _, h in hb for s in h["streams"].values() if s["entropy"]]
    out.append(f"**Huffman coding** stores every stream within {min(st) - 1:.1%}–{max(st) - 1:.1%} of its order-0 "
               f"entropy (code tables and lane offsets included); whole files are within "
               + ", ".join(f"{h['file'] / h['bound'] - 1:.1%} ({n.split(' (')[0]})" for n, h in hb)
               + " of entropy + codebooks + raw tensors: on the small LeNets the ONNX graph and metadata are a "
               "visible share of the file.")
    sp = [m["speed"] for m in res["models"]]
    lat = [s["lat_dcz"] / s["lat_onnx"] for s in sp]
    comp = [s["lat_compact"] / s["lat_onnx"] for s in sp]
    sess = [s["session_dcz"] / s["session_onnx"] for s in sp]
    dec = [s["decode_dcz"] / s["zstd_d"] for s in sp]
    out.append(f"**Speed**: once loaded, a `.dcz` runs at the speed of the ONNX model (latency ratio "
               f"{min(lat):.2f}–{max(lat):.2f}; latencies under 0.1 ms, the LeNets', are at the noise level of the timer). Decoding every tensor takes {min(dec):.2f}–{max(dec):.2f}x the time of "
               f"zstd -d on the ONNX file and creating a session {min(sess):.2f}–{max(sess):.2f}x the ONNX one. "
               f"Compact mode trades latency for memory: {min(comp):.1f}–{max(comp):.1f}x the latency, because every "
               "weight is rebuilt from its indices at each run; use it only where memory is the constraint.")
    mem = [(m["name"].split(" (")[0], m["memory"]) for m in res["models"]
           if all("error" not in v for v in m["memory"].values())]
    if mem:
        out.append("**Memory**: a full-mode `.dcz` session peaks above the `.onnx` session ("
                   + ", ".join(f"{n} {mm['dcz']['peak'] / mm['onnx']['peak']:.2f}x" for n, mm in mem)
                   + "), since the decoded weights are handed to ONNX Runtime; compact mode holds "
                   + ", ".join(f"{mm['compact']['peak'] / mm['dcz']['peak']:.2f}x ({n})" for n, mm in mem)
                   + " of the full-mode peak: worth it for large models, nothing for tiny ones, where fixed costs "
                     "dominate.")
    g = res["growth"]
    if len(g) >= 2:
        x = np.array([r["params"] for r in g], float) / 1e6
        y = np.array([r["seconds"] for r in g], float)
        k, c = np.polyfit(x, y, 1)
        out.append(f"**Conversion** of the CNN family takes {y[0]:.1f}–{y[-1]:.1f} s for {x[0]:.1f}–{x[-1]:.1f}M "
                   f"parameters: about {c:.1f} s fixed plus {k:.3f} s per million parameters (fitted), i.e. no "
                   f"worse than linear; on this loaded 2-core machine the timings are short enough for noise to "
                   f"matter. For comparison, zstd -19 of the 25M model's ONNX file takes longer than converting it "
                   f"(see the size table), and xz -9e much longer.")
    fails = [f"{m['name']}: {r['label']}: {r['error']}" for m in res["models"] for r in m["sizes"] if r.get("error")]
    if fails:
        out.append("**Not measured** (see the tables): " + "; ".join(sorted(set(f.split(': ', 1)[1] for f in fails))) + ".")
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one short training epoch (< 3 minutes)")
    ap.add_argument("--work", help="cache of trained and converted models (default: a temporary directory)")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the Markdown report to write")
    ap.add_argument("--json", help="also save the raw results here")
    ap.add_argument("--repeat", type=int, help="best-of-N for load timings (default 5; quick 3)")
    ap.add_argument("--runs", type=int, help="latency runs (default 50; quick 20)")
    ap.add_argument("--nncodec-python", default="/tmp/nnc-venv/bin/python",
                    help="python of a virtual environment with nncodec installed (kept apart: it needs numpy<2)")
    ap.add_argument("--nncodec-qp", type=int, default=-38, help="NNCodec quantization parameter (smaller: finer)")
    ap.add_argument("--models", default="lenet300,lenet5,cnn,transformer")
    ap.add_argument("--render", metavar="JSON", help="only rewrite --out from the results saved by an earlier --json")
    args = ap.parse_args(argv)
    if args.render:
        res = json.load(open(args.render))
        res["interpretation"] = interpretation(res)
        with open(args.out, "w") as f:
            f.write(render(res))
        return 0
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.runs = args.runs or (20 if args.quick else 50)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    tmp = None
    if args.work:
        work = args.work
        os.makedirs(work, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    res = {"machine": machine(), "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
           "args": vars(args),
           "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                                                       else sys.executable, "tools/bench.py", *(argv or sys.argv[1:])])}
    nv = subprocess.run([args.nncodec_python, "-c", "import importlib.metadata as m; print(m.version('nncodec'))"],
                        capture_output=True, text=True) if os.path.exists(args.nncodec_python) else None
    res["nncodec_version"] = nv.stdout.strip() if nv is not None and nv.returncode == 0 else "not available"
    from converters.data import load_idx_dir

    ds = load_idx_dir(FASHION)
    wanted = args.models.split(",")
    scales = (0.02, 0.08) if args.quick else (0.125, 0.25, 0.5, 1.0)
    models, cnns = [], {}
    for kind in wanted:
        if kind in ("lenet300", "lenet5"):
            models.append(lenet(kind, work, args.quick))
        elif kind == "cnn":
            s = scales[0] if args.quick else scales[-1]
            m = cnn(work, s, f"cnn-x{s:g}")
            cnns[f"cnn-x{s:g}"] = m
            models.append(m)
        elif kind == "transformer":
            models.append(transformer(work, args.quick))
    for m in models:
        log(f"{m['name']}: sizes")
        m["sizes"] = sizes(m, work, args.nncodec_python, args.nncodec_qp, ds if m["dataset"] else None)
        log(f"{m['name']}: Huffman bound")
        m["huffman"] = huffman(m)
        log(f"{m['name']}: speed")
        m["speed"] = speed(m, work, args.repeat, args.runs)
        log(f"{m['name']}: memory")
        m["memory"] = memory(m, work)
    log("conversion growth")
    res["growth"] = convert_growth(work, scales, cnns, 1 if args.quick else 3) if "cnn" in wanted else []
    res["models"] = models
    res["dcconvert_defaults"] = "?"
    for m in models:
        if m["kind"] in ("cnn", "transformer"):
            import dcformat

            with dcformat.open(m["dcz"]) as r:
                st = r.metadata.get("settings", {})
            sp, bt = st.get("default_sparsity", {}), st.get("default_bits", {})
            res["dcconvert_defaults"] = (f"prune {sp.get('conv', 0):.0%} of conv and {sp.get('fc', 0):.0%} of "
                                         f"fully connected / MatMul weights by magnitude, share them with "
                                         f"{bt.get('conv')} / {bt.get('fc')}-bit k-means codebooks")
            break
    res["runtime"] = time.perf_counter() - T0
    res["interpretation"] = interpretation(res)
    text = render(res)
    with open(args.out, "w") as f:
        f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print(text)
    log(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
