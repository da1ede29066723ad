"""Rate-accuracy of .dcz (bits x ECVQ strength) against NNCodec (qp, with and without dependent quantization)
on the two Fashion-MNIST LeNets, pruned and retrained by the pipeline (before weight sharing).

1. *prepare* (cached in --work): train LeNet-300-100 and LeNet-5 on Fashion-MNIST (as tools/bench.py does:
   30,000 images, 3 epochs, Adam 1e-3, seed 0), then prune them with retraining by the pipeline
   (``converters.pipeline.iterative_prune``: its default targets, conv 60% / fc 90%, schedule 0.5, 0.75, 0.9, 1.0, two
   retraining epochs per step). The pruned float weights are the common input of every coder below.
2. *.dcz*: every (bits, strength) of the grid through dcconvert's own code path (``converters.cli.convert``, with
   ``--sparsity 0 --bits B --ecvq S --min-size 0 --no-compensate``; the pruned zeros stay, nothing else is pruned
   by magnitude), biases stored exactly. With ``--bias-bits`` the biases are shared too (``--role '*bias=fc'``),
   as NNCodec quantizes them.
3. *NNCodec* (ISO/IEC 15938-17, DeepCABAC) in its own venv (``--nncodec-python``, as tools/bench.py) on the same
   pruned weights (all of them, biases included), across qp, with dependent quantization (``use_dq``) and without.
4. Every point's test accuracy (10,000 images) in ONNX Runtime: the .dcz through ``dcformat.InferenceSession``,
   NNCodec's decoded weights put into the pruned model's ONNX file.
5. Where the bytes go: each .dcz split into header, graph, metadata, codebooks, lane tables, code tables and
   stream payloads; NNCodec per tensor (each tensor coded alone) against its whole-model bitstream.

Output: a JSON file, a markdown report (the table: at every accuracy >= dense - 1 pt, the fewest .dcz bytes
reaching it against the fewest NNCodec bytes reaching it) and a plot. Rerun::

    PYTHONPATH=. /work/main/.venv/bin/python tools/bench_ecvq.py --work /tmp/dcz-ecvq --out results/ecvq
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

FASHION = "/usr/share/datasets/fashion-mnist"
BITS = (2, 3, 4, 5, 6, 7, 8)
STRENGTHS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
QPS = tuple(range(-50, -3, 2))
MODELS = ("lenet300", "lenet5")
BIAS_OPTIONS = tuple((b, st) for b in (3, 4, 6, 8) for st in (0.0, 1.0, 2.0))  # besides the grid's 5-bit biases
VAL = slice(50000, 60000)  # validation: training images neither training nor pruning saw (they use the first 30,000)
NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ models


def prepare(kind: str, work: str, ds) -> dict:
    """Dense-trained then pruned-and-retrained LeNet (before weight sharing): its ONNX file and accuracies."""
    onnx_p, meta_p = (os.path.join(work, f"{kind}.pruned{ext}") for ext in (".onnx", ".json"))
    if os.path.exists(onnx_p) and os.path.exists(meta_p):
        log(f"{kind}: cached in {work}")
        return {**json.load(open(meta_p)), "onnx": onnx_p}
    import onnx
    import torch

    from converters import pipeline as pl

    torch.set_num_threads(1)
    xtr, ytr = ds.x_train[:30000], ds.y_train[:30000]
    evaluate = pl.accuracy_fn(ds.x_test, ds.y_test)
    torch.manual_seed(0)
    model = pl.lenet300() if kind == "lenet300" else pl.lenet5()
    t = time.perf_counter()
    pl.train(model, (xtr, ytr), 3, lr=1e-3, seed=0)
    dense_acc = evaluate(model)
    onnx.save(pl.export_onnx(model, (1, 28, 28)), os.path.join(work, f"{kind}.dense.onnx"))
    s = pl.Settings(schedule=(0.5, 0.75, 0.9, 1.0), retrain_epochs=2, seed=0)
    info = pl.layers(model, s.min_size)
    targets = {n: pl.DEFAULT_SPARSITY[i.role] for n, i in info.items()}
    pl.iterative_prune(model, (xtr, ytr), targets, s, evaluate=evaluate)
    pruned_acc = evaluate(model)
    onnx.save(pl.export_onnx(model, (1, 28, 28)), onnx_p)
    meta = {"name": NAMES[kind], "kind": kind, "dense_torch": dense_acc, "pruned_torch": pruned_acc,
            "targets": targets, "seconds": time.perf_counter() - t,
            "params": int(sum(p.numel() for p in model.parameters()))}
    json.dump(meta, open(meta_p, "w"), indent=1)
    log(f"{kind}: dense {dense_acc:.2f}%, pruned {pruned_acc:.2f}% ({meta['seconds']:.0f} s)")
    return {**meta, "onnx": onnx_p}


def initializers(path: str) -> dict:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def with_weights(onnx_path: str, weights: dict, out: str) -> str:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(np.asarray(weights[t.name], np.float32).reshape(tuple(t.dims)), t.name))
    onnx.save(m, out)
    return out


def _session(path, dcz=False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if dcz:
        import dcformat

        return dcformat.InferenceSession(path, sess_options=so)
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def accuracy(sess, kind: str, ds) -> float:
    x = np.asarray(ds.x_test, np.float32).reshape(-1, 28, 28)  # both exported with input N x 28 x 28
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i : i + 2500]})[0].argmax(1) for i in range(0, len(x), 2500)])
    return float((pred == ds.y_test).mean() * 100)


# ------------------------------------------------------------------------------------------ .dcz


def convert_with(m: dict, out: str, bits: str, ecvq: str, role: str) -> dict:
    """dcconvert's own path: ``dcconvert PRUNED.onnx -o OUT --sparsity 0 --bits BITS --ecvq ECVQ [--role ROLE]
    --min-size 0 --no-compensate``; the converter's report."""
    from converters import cli
    from converters import compress as cmp
    from converters import settings as st
    from converters.ecvq import parse_strength
    from converters.roles import parse_overrides

    s = cmp.Settings(sparsity=st.LayerSetting.parse("--sparsity", "0", st.fraction),
                     bits=st.LayerSetting.parse("--bits", bits, st.bits),
                     ecvq=st.LayerSetting.parse("--ecvq", ecvq, parse_strength), min_size=0,
                     compensate=False, roles=parse_overrides(role))
    return cli.convert(m["onnx"], out, s, manual=True)


def command(m: dict, out: str, bits: str, ecvq: str, role: str) -> str:
    """The dcconvert command line that writes the same file."""
    r = f" --role '{role}'" if role else ""
    return (f"dcconvert {os.path.basename(m['onnx'])} -o {os.path.basename(out)} --sparsity 0 --bits '{bits}' "
            f"--ecvq '{ecvq}'{r} --min-size 0 --no-compensate")


def _layers(rep: dict) -> list[dict]:
    return [{k: r.get(k) for k in ("name", "encoding", "bytes", "nonzeros", "codebook_size", "gap_bits", "ecvq")}
            for r in rep["layers"]]


def dcz_point(m: dict, bits: int, strength: float, work: str, bias_bits: int | None,
              bias_strength: float | None = None) -> dict:
    bs = strength if bias_strength is None else bias_strength
    tag = f"{m['kind']}.b{bits}.s{strength:g}" + (f".bias{bias_bits}" if bias_bits else "") + \
        (f".bs{bs:g}" if bias_bits and bs != strength else "")
    out = os.path.join(work, tag + ".dcz")
    bits_t = f"*bias={bias_bits},{bits}" if bias_bits else str(bits)
    ecvq_t = f"*bias={bs:g},{strength:g}" if bias_bits and bs != strength else f"{strength:g}"
    t = time.perf_counter()
    rep = convert_with(m, out, bits_t, ecvq_t, "*bias=fc" if bias_bits else "")
    seconds = time.perf_counter() - t
    return {"bits": bits, "strength": strength, "bias_bits": bias_bits, "bias_strength": bs if bias_bits else None,
            "path": out, "bytes": os.path.getsize(out), "seconds": seconds, "layers": _layers(rep)}


def perlayer_points(m: dict, grid: list[dict], bias_pts: list[dict], work: str, ds) -> dict:
    """The per-layer allocations chosen on the validation images (tools/perlayer.py), each converted by dcconvert
    with per-tensor patterns and scored on the test images."""
    import perlayer

    xv, yv = ds.x_train[VAL], ds.y_train[VAL]
    t = time.perf_counter()
    res = perlayer.allocate(m["onnx"], grid + bias_pts, xv, yv, log=log)
    pts = []
    for i, c in enumerate(res["candidates"]):
        txt = perlayer.settings_text(c["alloc"])
        out = os.path.join(work, f"{m['kind']}.perlayer{i}.dcz")
        rep = convert_with(m, out, txt["bits"], txt["ecvq"], txt["role"])
        p = {"perlayer": i, "alloc": {n: (k if k == perlayer.EXACT else list(k)) for n, k in c["alloc"].items()},
             "exact_biases": all(k == perlayer.EXACT for n, k in c["alloc"].items() if n.endswith("bias")),
             "val_accuracy": c["val_accuracy"], "val_nll": c["val_nll"], "tensor_bytes_estimate": c["tensor_bytes"],
             "command": command(m, out, **txt), "path": out, "bytes": os.path.getsize(out), "layers": _layers(rep)}
        p["accuracy"] = accuracy(_session(out, dcz=True), m["kind"], ds)
        bd = breakdown(out)
        p["graph_bytes"], p["metadata_bytes"] = bd["graph"], bd["metadata"]
        pts.append(p)
    log(f"{m['kind']}: {len(pts)} per-layer points in {time.perf_counter() - t:.0f} s")
    return {"points": pts, "val_float": res["val_float"], "options": res["options"], "val_runs": res["val_runs"],
            "allocations": res["all_candidates"], "seconds": time.perf_counter() - t}


def breakdown(path: str) -> dict:
    """Bytes of a .dcz by what they hold (sums over tensors)."""
    import dcformat
    from dcformat import streams
    from dcformat.constants import PREAMBLE_SIZE

    out = dict.fromkeys(("preamble+header", "graph", "metadata", "raw tensors", "codebooks", "lane bases",
                         "gap tables", "gap payload", "index tables", "index payload", "other", "alignment"), 0)
    with open(path, "rb") as f:
        pre = f.read(PREAMBLE_SIZE)
    hlen = struct.unpack("<8sHHIII", pre)[3]
    out["preamble+header"] = PREAMBLE_SIZE + hlen
    r = dcformat.open(path)
    try:
        used = PREAMBLE_SIZE + hlen
        for sec in r.sections:
            used += sec.length
            if sec.kind == "graph":
                out["graph"] += sec.length
            elif sec.kind == "metadata":
                out["metadata"] += sec.length
            elif sec.kind != "tensor":
                out["other"] += sec.length
        for name, i in r.tensors.items():
            p = dict(i.parts)
            if i.encoding == "raw" or i.encoding == "float-planes":
                out["raw tensors"] += i.nbytes
                continue
            out["codebooks"] += p.get("codebook", 0)
            out["lane bases"] += p.get("lane_bases", 0)
            n = i.entries if i.encoding == "codebook-sparse" else i.numel
            if "gaps" in p and p["gaps"]:
                pre_g = streams.stream_prefix_bytes(1 << i.gap_bits, n, i.lane_size)
                out["gap tables"] += pre_g
                out["gap payload"] += p["gaps"] - pre_g
            if p.get("indices"):
                pre_i = streams.stream_prefix_bytes(i.index_alphabet, n, i.lane_size)
                out["index tables"] += pre_i
                out["index payload"] += p["indices"] - pre_i
            out["alignment"] += i.nbytes - sum(p.values())
        out["alignment"] += r.file_size - used
    finally:
        r.close()
    out["total"] = os.path.getsize(path)
    return out


# ------------------------------------------------------------------------------------------ NNCodec


NNC_CHILD = r"""
import json, sys, time, numpy as np
try:
    import torchvision  # noqa: F401  (nncodec imports it for its datasets only)
except Exception:  # a torchvision whose C extension does not match torch: not needed to code weights
    import importlib.abc, importlib.machinery, types
    from unittest import mock
    class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, self, is_package=True) if name.split(".")[0] == "torchvision" else None
        def create_module(self, spec):
            m = mock.MagicMock(name=spec.name); m.__path__ = []; m.__spec__ = spec; return m
        def exec_module(self, module):
            pass
    for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
        del sys.modules[k]
    sys.meta_path.insert(0, _Stub())
from nncodec import nnc
jobs = json.loads(sys.argv[1])
for j in jobs:  # one process: torch imports once
    w = dict(np.load(j["src"]))
    t = time.perf_counter()
    nnc.compress(w, bitstream_path=j["bs"], qp=j["qp"], use_dq=j["dq"], return_bitstream=False)
    t_enc = time.perf_counter() - t
    rec = nnc.decompress(j["bs"], return_model_information=False)
    if j.get("dec"):
        np.savez(j["dec"], **{k: np.asarray(v, dtype=np.float32) for k, v in rec.items()})
    print("NNC " + json.dumps({"id": j["id"], "encode_seconds": t_enc}), flush=True)
"""


def nncodec(python: str, jobs: list[dict]) -> dict:
    if not os.path.exists(python):
        log(f"NNCodec: {python} not found: {len(jobs)} jobs skipped (give --nncodec-python)")
        return {}
    p = subprocess.run([python, "-c", NNC_CHILD, json.dumps(jobs)], capture_output=True, text=True, timeout=3000)
    done = {}
    for ln in p.stdout.splitlines():
        if ln.startswith("NNC "):
            r = json.loads(ln[4:])
            done[r["id"]] = r
    if len(done) < len(jobs):
        tail = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        log(f"NNCodec: {len(jobs) - len(done)} jobs failed: {(tail[-1] if tail else p.returncode)}")
    return done


def nnc_points(m: dict, work: str, python: str, qps, ds) -> list[dict]:
    w = {k: v.astype(np.float32) for k, v in initializers(m["onnx"]).items()}
    src = os.path.join(work, f"{m['kind']}.nnc-in.npz")
    np.savez(src, **w)
    jobs = []
    for dq in (True, False):
        for qp in qps:
            tag = os.path.join(work, f"{m['kind']}.nnc.qp{qp}.{'dq' if dq else 'nodq'}")
            jobs.append({"id": len(jobs), "src": src, "bs": tag + ".bin", "dec": tag + ".npz", "qp": qp, "dq": dq})
    todo = [j for j in jobs if not (os.path.exists(j["bs"]) and os.path.exists(j["dec"]))]  # cached in --work
    done = {j["id"]: {"encode_seconds": None} for j in jobs if j not in todo}
    if todo:
        done.update(nncodec(python, todo))
    else:
        log(f"{m['kind']}: NNCodec's {len(jobs)} bitstreams cached in {work}")
    pts = []
    for j in jobs:
        if j["id"] not in done:
            continue
        dec = dict(np.load(j["dec"]))
        p = with_weights(m["onnx"], dec, j["dec"][:-4] + ".onnx")
        pts.append({"qp": j["qp"], "dq": j["dq"], "bytes": os.path.getsize(j["bs"]),
                    "accuracy": accuracy(_session(p), m["kind"], ds), "seconds": done[j["id"]]["encode_seconds"]})
    return pts


def nnc_per_tensor(m: dict, work: str, python: str, qp: int, dq: bool) -> dict:
    """NNCodec's bytes for each tensor coded alone, and for the whole model."""
    w = {k: v.astype(np.float32) for k, v in initializers(m["onnx"]).items()}
    jobs = []
    for name, a in w.items():
        src = os.path.join(work, f"{m['kind']}.nnc1.{name}.npz")
        np.savez(src, **{name: a})
        jobs.append({"id": len(jobs), "src": src, "bs": src[:-4] + f".qp{qp}.bin", "qp": qp, "dq": dq, "name": name})
    todo = [j for j in jobs if not os.path.exists(j["bs"])]
    done = {j["id"]: {} for j in jobs if j not in todo}
    if todo:
        done.update(nncodec(python, todo))
    return {j["name"]: os.path.getsize(j["bs"]) for j in jobs if j["id"] in done}


# ------------------------------------------------------------------------------------------ analysis


def frontier(points: list[dict]) -> list[dict]:
    """Pareto points: fewer bytes and higher accuracy than every point they beat (sorted by bytes)."""
    out, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["bytes"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def weights_bytes(p: dict) -> int:
    """A .dcz's bytes without its graph and metadata sections: what NNCodec's bitstream also holds (weights and
    the headers describing them; NNCodec stores no graph, so a user ships the model's architecture besides it)."""
    return p["bytes"] - p.get("graph_bytes", 0) - p.get("metadata_bytes", 0)


def fewest_bytes(points: list[dict], acc: float, size=lambda p: p["bytes"]):
    ok = [p for p in points if p["accuracy"] >= acc - 1e-9]
    return min(ok, key=lambda p: (size(p), -p["accuracy"])) if ok else None


def comparison(dense: float, dcz: list[dict], nnc: list[dict], levels_of: list[dict] | None = None) -> list[dict]:
    """At each accuracy level >= dense - 1 that either coder reaches (or the points ``levels_of``): the fewest bytes
    of each reaching it (the whole .dcz file, and the .dcz without graph and metadata)."""
    levels = sorted({round(p["accuracy"], 2) for p in (levels_of or dcz + nnc) if p["accuracy"] >= dense - 1.0 - 1e-9})
    rows = []
    for a in levels:
        d, n, w = fewest_bytes(dcz, a), fewest_bytes(nnc, a), fewest_bytes(dcz, a, weights_bytes)
        rows.append({"accuracy": a, "dcz": d and d["bytes"], "dcz_point": d and _label(d),
                     "dcz_weights": w and weights_bytes(w), "dcz_weights_point": w and _label(w),
                     "nnc": n and n["bytes"], "nnc_point": n and _label(n),
                     "ratio": (d["bytes"] / n["bytes"]) if d and n else None,
                     "ratio_weights": (weights_bytes(w) / n["bytes"]) if w and n else None})
    return rows


def all_dcz(m: dict) -> list[dict]:
    """The .dcz points of a model: the uniform grid and the per-layer allocations."""
    return m["dcz"] + m.get("perlayer", {}).get("points", [])


def tables(m: dict) -> None:
    """The per-accuracy comparisons: every .dcz point; exact biases only; the uniform grid only. The levels: the
    accuracies the uniform grid and NNCodec reach (as before the per-layer points: more levels between these could
    only add ratios no larger than the next level's)."""
    pts, levels = all_dcz(m), m["dcz"] + m["nnc"]
    exact = [p for p in pts if not p.get("bias_bits") and p.get("exact_biases", True)]
    m["table"] = comparison(m["dense_ort"], pts, m["nnc"], levels)  # any .dcz setting: exact or shared biases
    m["table_exact"] = comparison(m["dense_ort"], exact, m["nnc"], levels)
    m["table_grid"] = comparison(m["dense_ort"], m["dcz"], m["nnc"], levels)


def summary(rows: list[dict], key: str) -> str:
    r = [x[key] for x in rows if x[key] is not None]
    if not r:
        return "—"
    return f"{min(r):.3f} .. {max(r):.3f} (geometric mean {math.exp(np.mean(np.log(r))):.3f})"


def _label(p: dict) -> str:
    if "perlayer" in p:
        return f"per-layer #{p['perlayer']}"
    if "qp" in p:
        return f"qp {p['qp']}{' dq' if p['dq'] else ''}"
    return f"{p['bits']} b, S {p['strength']:g}" + (f", bias {p['bias_bits']} b" if p.get("bias_bits") else "")


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["models"]), figsize=(6.5 * len(res["models"]), 4.6))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, res["models"]):
        dense = m["dense_ort"]
        groups = {
            ".dcz, plain k-means (S=0)": [p for p in m["dcz"] if p["strength"] == 0 and not p.get("bias_bits")],
            ".dcz, ECVQ (all S)": [p for p in m["dcz"] if not p.get("bias_bits")],
            ".dcz, ECVQ + shared biases": [p for p in m["dcz"]],
            ".dcz, ECVQ, without graph + metadata": [{**p, "bytes": weights_bytes(p)} for p in m["dcz"]
                                                      if not p.get("bias_bits")],
            ".dcz, grid + per-layer allocations": all_dcz(m),
            "NNCodec, dependent quantization": [p for p in m["nnc"] if p["dq"]],
            "NNCodec, no DQ": [p for p in m["nnc"] if not p["dq"]],
        }
        styles = ["C0--", "C0-", "C2-", "C0:", "C4-", "C3-", "C1--"]
        for (label, pts), st in zip(groups.items(), styles):
            if not pts:
                continue
            ax.scatter([p["bytes"] / 1e3 for p in pts], [p["accuracy"] for p in pts], s=6, color=st[:2], alpha=0.35)
            f = frontier(pts)
            ax.plot([p["bytes"] / 1e3 for p in f], [p["accuracy"] for p in f], st[2:], color=st[:2], label=label,
                    drawstyle="steps-post", lw=1.4)
        ax.axhline(dense, color="k", lw=0.7)
        ax.axhline(dense - 1, color="k", lw=0.7, ls=":")
        ax.set_ylim(dense - 3, dense + 0.8)
        lo = min([p["bytes"] for p in m["dcz"] + m["nnc"] if p["accuracy"] >= dense - 3] or [1]) / 1e3
        ax.set_xlim(lo * 0.85, lo * 2.2)
        ax.set_xlabel("file bytes (kB)")
        ax.set_ylabel("test accuracy, ONNX Runtime (%)")
        ax.set_title(f"{m['name']} pruned (dense {dense:.2f}%; dotted: dense - 1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(res: dict) -> str:
    import perlayer

    out = ["# Entropy-constrained weight sharing: .dcz against NNCodec on the pruned Fashion-MNIST LeNets", "",
           f"Generated by `{res['command']}` ({res['date']}, {res['seconds']:.0f} s; NNCodec {res['nncodec_version']}).",
           "",
           "Both LeNets trained on Fashion-MNIST (30,000 images, 3 epochs) and pruned with retraining by the pipeline "
           "(conv 60% / fc 90%, schedule 0.5 / 0.75 / 0.9 / 1.0, 2 epochs each), *before* weight sharing: every coder gets "
           "the same pruned float weights. `.dcz`: dcconvert's path with `--sparsity 0 --bits B --ecvq S --min-size 0 "
           "--no-compensate` (biases exact unless marked *bias*), B in "
           f"{', '.join(map(str, res['bits']))}, S in {', '.join(f'{s:g}' for s in res['strengths'])}; NNCodec on all "
           f"the weights (biases too), qp {res['qps'][0]}..{res['qps'][-1]}, with and without dependent quantization. "
           "Accuracy: the 10,000 test images in ONNX Runtime. Bytes: whole files (the .dcz with its graph, header and "
           "metadata; NNCodec's bitstream has no graph). *per-layer #i*: an allocation of tools/perlayer.py (each "
           "tensor its own bits and S, biases exact or shared at 3-8 bits), chosen on validation images from the "
           "training set, converted by dcconvert with per-tensor patterns (commands below each model's table). "
           "Accuracy levels: those the uniform grid and NNCodec reach (as before the per-layer points).", "",
           "![rate-accuracy](ecvq.png)", ""]
    for m in res["models"]:
        out += [f"## {m['name']} ({m['params']:,} parameters; dense {m['dense_ort']:.2f}%, pruned {m['pruned_ort']:.2f}%)",
                "",
                "At each accuracy level >= dense - 1 pt reached by either: the fewest bytes that reach it "
                "(.dcz: any bits x S, biases exact or shared at --bias-bits (*bias* in the setting), or any per-layer "
                "point; NNCodec: any qp, DQ or not, biases quantized). Ratios below 1: .dcz smaller.", "",
                "| accuracy >= | .dcz file | .dcz setting | NNCodec | NNCodec setting | .dcz / NNCodec | "
                ".dcz without graph+metadata | setting | ratio | .dcz, exact biases | ratio | uniform grid only | ratio |",
                "|---:|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        f = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
        g = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        grid = m.get("table_grid") or m["table"]
        for r, rb, rg in zip(m["table"], m["table_exact"], grid):
            out.append(f"| {r['accuracy']:.2f}% | {f(r['dcz'])} | {r['dcz_point'] or '—'} | {f(r['nnc'])} | "
                       f"{r['nnc_point'] or '—'} | {g(r['ratio'])} | {f(r['dcz_weights'])} | "
                       f"{r['dcz_weights_point'] or '—'} | {g(r['ratio_weights'])} | {f(rb['dcz'])} | {g(rb['ratio'])} | "
                       f"{f(rg['dcz'])} | {g(rg['ratio'])} |")
        out += ["", f"Over these levels, .dcz / NNCodec bytes: whole file {summary(m['table'], 'ratio')}; without graph "
                    f"and metadata {summary(m['table'], 'ratio_weights')}; whole file with exact biases only "
                    f"{summary(m['table_exact'], 'ratio')}; the uniform grid only (no per-layer point), whole file "
                    f"{summary(grid, 'ratio')}, without graph and metadata {summary(grid, 'ratio_weights')}."]
        pl = m.get("perlayer")
        if pl and pl["points"]:
            out += ["", f"Per-layer points (tools/perlayer.py): {len(pl['points'])} allocations, the validation Pareto "
                        f"front (within {perlayer.MARGIN:g} points of the float model there) of {pl['allocations']} allocations "
                        f"(the Lagrangian paths' convex-hull vertices and knapsack optima 0.5% of bytes apart), chosen on {VAL.stop - VAL.start:,} "
                        f"Fashion-MNIST *training* images (indices {VAL.start:,}..{VAL.stop - 1:,}, seen neither by "
                        f"training nor by pruning; float model {pl['val_float'][1]:.2f}% there) in "
                        f"{pl['val_runs']} validation runs, {pl['seconds']:.0f} s. Test accuracy only after the "
                        "choice. Each file is written by the command beside it (in --work, from the pruned ONNX model).",
                    "", "| # | bytes | validation acc | test acc | dcconvert command |", "|---:|---:|---:|---:|---|"]
            for p in pl["points"]:
                out.append(f"| {p['perlayer']} | {p['bytes']:,} | {p['val_accuracy']:.2f}% | {p['accuracy']:.2f}% | "
                           f"`{p['command']}` |")
        out += ["", "ECVQ against plain k-means (S = 0) at the same bits (exact biases): bytes and accuracy.", "",
                "| bits | S=0 bytes | S=0 acc | " + " | ".join(f"S={s:g}" for s in res["strengths"][1:]) + " |",
                "|---:|---:|---:|" + "---:|" * (len(res["strengths"]) - 1)]
        for b in res["bits"]:
            row = {p["strength"]: p for p in m["dcz"] if p["bits"] == b and not p.get("bias_bits")}
            if 0.0 not in row:
                continue
            z = row[0.0]
            cells = [f"{row[s]['bytes'] / z['bytes']:.3f}x, {row[s]['accuracy']:.2f}%" if s in row else "—"
                     for s in res["strengths"][1:]]
            out.append(f"| {b} | {z['bytes']:,} | {z['accuracy']:.2f}% | " + " | ".join(cells) + " |")
        if m.get("breakdown"):
            bd = m["breakdown"]
            out += ["", f"Where the bytes go at the matched point ({bd['dcz_point']} against NNCodec {bd['nnc_point']}):", "",
                    "| .dcz part | bytes |", "|---|---:|"]
            out += [f"| {k} | {v:,} |" for k, v in bd["dcz"].items()]
            out += ["", "| tensor | .dcz bytes | NNCodec bytes (coded alone) |", "|---|---:|---:|"]
            for name, (a, b) in bd["tensors"].items():
                out.append(f"| {name} | {a:,} | {'—' if b is None else f'{b:,}'} |")
            out.append(f"| whole file / bitstream | {bd['dcz']['total']:,} | {bd['nnc_total']:,} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/dcz-ecvq", help="cache of trained models and coded files")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "ecvq"), help="directory of ecvq.json/.md/.png")
    ap.add_argument("--nncodec-python", default="/tmp/nnc-venv/bin/python")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bits", default=",".join(map(str, BITS)))
    ap.add_argument("--strengths", default=",".join(f"{s:g}" for s in STRENGTHS))
    ap.add_argument("--qps", default=",".join(map(str, QPS)))
    ap.add_argument("--bias-bits", type=int, default=5, help="bits of the shared-bias variant (0: none)")
    ap.add_argument("--no-perlayer", action="store_true", help="only the uniform grid (no per-layer allocation)")
    ap.add_argument("--render-only", action="store_true", help="redo the tables, README and plot from --out's ecvq.json")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.load(open(os.path.join(args.out, "ecvq.json")))
        for m in res["models"]:
            tables(m)
        plot(res, os.path.join(args.out, "ecvq.png"))
        open(os.path.join(args.out, "README.md"), "w").write(render(res))
        return 0
    from converters.data import load_idx_dir

    t0 = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    ds = load_idx_dir(FASHION)
    bits = [int(b) for b in args.bits.split(",")]
    strengths = [float(s) for s in args.strengths.split(",")]
    qps = [int(q) for q in args.qps.split(",")]
    nv = subprocess.run([args.nncodec_python, "-c", "import importlib.metadata as m; print(m.version('nncodec'))"],
                        capture_output=True, text=True) if os.path.exists(args.nncodec_python) else None
    res = {"command": "PYTHONPATH=. /work/main/.venv/bin/python tools/bench_ecvq.py " + " ".join(argv or sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bits": bits, "strengths": strengths, "qps": qps,
           "nncodec_version": nv.stdout.strip() if nv is not None and nv.returncode == 0 else "not available",
           "models": []}
    for kind in args.models.split(","):
        m = prepare(kind, args.work, ds)
        m["pruned_ort"] = accuracy(_session(m["onnx"]), kind, ds)
        m["dense_ort"] = accuracy(_session(os.path.join(args.work, f"{kind}.dense.onnx")), kind, ds)
        log(f"{kind}: pruned {m['pruned_ort']:.2f}% in ORT; .dcz grid")
        pts = []
        for b in bits:
            for s in strengths:
                for bb in ([None, args.bias_bits] if args.bias_bits else [None]):
                    p = dcz_point(m, b, s, args.work, bb)
                    p["accuracy"] = accuracy(_session(p["path"], dcz=True), kind, ds)
                    bd = breakdown(p["path"])
                    p["graph_bytes"], p["metadata_bytes"] = bd["graph"], bd["metadata"]
                    pts.append(p)
        m["dcz"] = pts
        if not args.no_perlayer:
            log(f"{kind}: bias options, per-layer allocation on the validation images")
            bias_pts = [dcz_point(m, 8, 0.0, args.work, bb, bs) for bb, bs in BIAS_OPTIONS]
            m["perlayer"] = perlayer_points(m, pts, bias_pts, args.work, ds)
        log(f"{kind}: NNCodec")
        m["nnc"] = nnc_points(m, args.work, args.nncodec_python, qps, ds)
        tables(m)
        # breakdown where the coders are closest to dense - 0.5
        target = m["dense_ort"] - 0.5
        d, n = fewest_bytes(all_dcz(m), target), fewest_bytes(m["nnc"], target)
        if d and n:
            per = nnc_per_tensor(m, args.work, args.nncodec_python, n["qp"], n["dq"])
            lay = {r["name"]: r["bytes"] for r in d["layers"]}
            m["breakdown"] = {"dcz_point": _label(d), "nnc_point": _label(n), "dcz": breakdown(d["path"]),
                              "tensors": {k: (lay[k], per.get(k)) for k in lay}, "nnc_total": n["bytes"],
                              "target_accuracy": target}
        res["models"].append(m)
    res["seconds"] = time.perf_counter() - t0
    for m in res["models"]:
        for p in m.get("perlayer", {}).get("points", []):
            p.pop("path", None)
        for p in m["dcz"]:  # per-layer rows only in the breakdown: keeps the JSON small
            p.pop("path", None)
            p["layers"] = [{k: r[k] for k in ("name", "bytes")} | ({"ecvq": r["ecvq"]} if r.get("ecvq") else {})
                           for r in p["layers"]]
    json.dump(res, open(os.path.join(args.out, "ecvq.json"), "w"), separators=(",", ":"), default=str)
    plot(res, os.path.join(args.out, "ecvq.png"))
    open(os.path.join(args.out, "README.md"), "w").write(render(res))
    log(f"wrote {args.out}/README.md, ecvq.json, ecvq.png in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
