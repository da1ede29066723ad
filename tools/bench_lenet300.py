"""Deep Compression's LeNet-300-100 experiment on Fashion-MNIST, through dcconvert.

1. Train LeNet-300-100 (784-300-100-10, ReLU) in PyTorch, seeded and deterministic.
2. Iterative magnitude pruning to the paper's per-layer sparsities (fc1 92%, fc2 91%, fc3 74%;
   about 92% of all weights), retraining with the masks held after every step.
3. Export the pruned fp32 model to ONNX (input N x 784, logits) and run
   ``dcconvert model.onnx -o model.dcz --bits 5 --sparsity 0`` (the installed console script).
4. Measure
   * the .dcz size against the Huffman bound: for each stored Huffman stream (the gap and
     index streams, decoded from the file with dcformat.streams.parse_stream and the decode
     kernel) symbol count x the stream's empirical entropy / 8, plus the codebook bytes and
     the bytes of tensors stored raw (biases, small tensors). Target .dcz / bound <= 1.10;
   * the .dcz size against the fp32 ONNX file. Target >= 35x;
   * test accuracy of the pruned fp32 model (ONNX Runtime on the .onnx) and of the decoded
     .dcz model (dcformat.InferenceSession). Target: change <= 0.3 points.

    .venv/bin/python tools/bench_lenet300.py                       # Fashion-MNIST from /usr/share/datasets
    .venv/bin/python tools/bench_lenet300.py --data DIR --keep out/  # any MNIST-format directory; keep the files
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
TARGETS = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}  # Han et al. 2015, LeNet-300-100
SCHEDULE = (0.5, 0.75, 0.9, 1.0)  # fractions of the target sparsity, one retraining round each


# ---------------------------------------------------------------------------------------------- data


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(d: str):
    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(d, name)):
                return os.path.join(d, name)
        raise SystemExit(f"{d}: no {stem}[.gz] (an MNIST-format directory is needed)")

    x_tr = _read_idx(find("train-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255
    y_tr = _read_idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    x_te = _read_idx(find("t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255
    y_te = _read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    return x_tr, y_tr, x_te, y_te


# ---------------------------------------------------------------------------------------------- model


def make_model(torch):
    class LeNet300(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(784, 300)
            self.fc2 = torch.nn.Linear(300, 100)
            self.fc3 = torch.nn.Linear(100, 10)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    return LeNet300()


def train(torch, model, x, y, epochs, lr, seed, masks=None, batch=128):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for name, m in masks.items():
                        getattr(model, name).weight.mul_(m)
    model.eval()


def accuracy_torch(torch, model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def magnitude_masks(torch, model, fraction: float) -> dict:
    masks = {}
    for name, target in TARGETS.items():
        w = getattr(model, name).weight.detach()
        k = int(round(target * fraction * w.numel()))
        thresh = w.abs().flatten().kthvalue(k).values if k else -1.0
        masks[name] = (w.abs() > thresh).float()
    return masks


# ---------------------------------------------------------------------------------------------- the Huffman bound


def _decode_symbols(part: np.ndarray, n: int, alphabet: int, lane_size: int, where: str) -> np.ndarray:
    """The n symbols of one Huffman stream part, decoded by dcformat's own kernel."""
    from dcformat import kernels
    from dcformat.streams import parse_stream, raise_lane_error

    s = parse_stream(part, n, alphabet, lane_size, where, 0)
    out = np.empty(n, np.uint16)
    if n:
        status = kernels.decode_dense(s.payload, s.lane_offsets, s.table, s.table_bits, n, lane_size,
                                      np.arange(alphabet, dtype=np.uint16), out)
        raise_lane_error(status, where, (("stream", s),))
    return out


def _entropy_bits(symbols: np.ndarray, alphabet: int) -> tuple[float, int]:
    """(n x empirical entropy, bits of dcformat's Huffman code for these counts)."""
    from dcformat import huffman

    counts = np.bincount(symbols, minlength=alphabet)
    n = counts.sum()
    if n == 0:
        return 0.0, 0
    p = counts[counts > 0] / n
    return float(-(counts[counts > 0] * np.log2(p)).sum()), huffman.coded_bits(counts, huffman.code_lengths(counts))


def huffman_bound(path: str) -> dict:
    """Per tensor: stream symbols, entropy bound, actual Huffman bits, codebook and raw bytes; file overhead."""
    import dcformat
    from dcformat.decode import split_parts

    rows = []
    with dcformat.open(path) as r:
        size = r.file_size
        meta_bytes = r._meta_section.length if r._meta_section else 0
        graph_bytes = r._graph_section.length if r._graph_section else 0
        for name in r:
            info = r.info(name)
            sec = r._section_bytes(r._tensor_sections[name], name)
            parts = split_parts(info, sec, name)
            row = {"name": name, "encoding": info.encoding, "numel": info.numel, "nonzeros": info.nonzeros,
                   "section": info.nbytes, "streams": [], "codebook": 0, "raw": 0}
            if info.encoding == "raw":
                row["raw"] = int(parts["data"].size)
            else:
                row["codebook"] = int(parts["codebook"].size)
                if info.encoding == "codebook-dense":
                    streams = [("indices", info.numel, info.codebook_size)]
                else:
                    row["gap_bits"] = info.gap_bits
                    streams = [("gaps", info.entries, 1 << info.gap_bits),
                               ("indices", info.entries, info.codebook_size + 1)]
                for part, n, alphabet in streams:
                    sym = _decode_symbols(parts[part], n, alphabet, info.lane_size, f"{name} {part}")
                    h_bits, huff_bits = _entropy_bits(sym, alphabet)
                    row["streams"].append({"part": part, "symbols": int(n), "alphabet": alphabet,
                                           "entropy_bits": h_bits, "huffman_bits": huff_bits,
                                           "stored_bytes": int(parts[part].size)})
            rows.append(row)
    stream_h = sum(s["entropy_bits"] for r in rows for s in r["streams"]) / 8
    stream_huff = sum(s["huffman_bits"] for r in rows for s in r["streams"]) / 8
    stream_stored = sum(s["stored_bytes"] for r in rows for s in r["streams"])
    codebook = sum(r["codebook"] for r in rows)
    raw = sum(r["raw"] for r in rows)
    sections = sum(r["section"] for r in rows)
    bound = stream_h + codebook + raw
    return {
        "file": size, "bound": bound, "ratio": size / bound, "rows": rows,
        "stream_entropy_bytes": stream_h, "stream_huffman_bytes": stream_huff, "stream_stored_bytes": stream_stored,
        "codebook_bytes": codebook, "raw_bytes": raw,
        "overhead": {
            "huffman redundancy (code vs entropy)": stream_huff - stream_h,
            "stream tables, lane padding (code lengths, lane offsets)": stream_stored - stream_huff,
            "lane bases, part alignment": sections - stream_stored - codebook - raw,
            "metadata section": meta_bytes,
            "graph section (ONNX, weights as references)": graph_bytes,
            "preamble, header, section alignment": size - sections - meta_bytes - graph_bytes,
        },
    }


# ---------------------------------------------------------------------------------------------- main


def accuracy_session(sess, x, y) -> float:
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i : i + 2000]})[0].argmax(1) for i in range(0, len(x), 2000)])
    return float((pred == y).mean())


def dcconvert_cmd(onnx_path, dcz_path, *extra) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "dcconvert")
    return [exe, onnx_path, "-o", dcz_path, "--bits", "5", "--sparsity", "0", *extra]


def report(label, onnx_path, dcz_path, acc_fp32, x_te, y_te, verbose=True) -> dict:
    import dcformat

    b = huffman_bound(dcz_path)
    acc_dcz = accuracy_session(dcformat.InferenceSession(dcz_path), x_te, y_te)
    onnx_bytes = os.path.getsize(onnx_path)
    res = {"label": label, "dcz_bytes": b["file"], "bound_bytes": b["bound"], "dcz_over_bound": b["ratio"],
           "onnx_bytes": onnx_bytes, "onnx_over_dcz": onnx_bytes / b["file"], "acc_fp32": acc_fp32, "acc_dcz": acc_dcz,
           "acc_change_points": 100 * (acc_dcz - acc_fp32)}
    print(f"\n== {label}")
    if verbose:
        print(f"{'tensor':<12} {'encoding':<16} {'elements':>8} {'nonzero':>7} {'section B':>9} {'codebook B':>10} "
              f"{'raw B':>6}  streams (symbols, entropy B, Huffman B, stored B)")
        for r in b["rows"]:
            s = "; ".join(f"{x['part']}: {x['symbols']}, {x['entropy_bits'] / 8:.0f}, {x['huffman_bits'] / 8:.0f}, "
                          f"{x['stored_bytes']}" for x in r["streams"])
            enc = r["encoding"] + (f" b={r['gap_bits']}" if r.get("gap_bits") else "")
            print(f"{r['name']:<12} {enc:<16} {r['numel']:>8} {r['nonzeros']:>7} {r['section']:>9} {r['codebook']:>10} "
                  f"{r['raw']:>6}  {s}")
        print(f"bound = streams x entropy {b['stream_entropy_bytes']:.0f} B + codebooks {b['codebook_bytes']} B "
              f"+ raw tensors {b['raw_bytes']} B = {b['bound']:.0f} B")
        print(f"the file's {b['file'] - b['bound']:.0f} B above the bound:")
        for k, v in sorted(b["overhead"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:8.0f} B  {k}")
    print(f".dcz {b['file']:,} B / Huffman bound {b['bound']:,.0f} B = {b['ratio']:.3f} (target <= 1.10: "
          f"{'met' if b['ratio'] <= 1.10 else 'MISSED by %.1f%%' % (100 * (b['ratio'] - 1.10))})")
    print(f"fp32 ONNX {onnx_bytes:,} B / .dcz {b['file']:,} B = {res['onnx_over_dcz']:.1f}x (target >= 35x: "
          f"{'met' if res['onnx_over_dcz'] >= 35 else 'MISSED'})")
    print(f"test accuracy: pruned fp32 {100 * acc_fp32:.2f}%, decoded .dcz {100 * acc_dcz:.2f}%, change "
          f"{res['acc_change_points']:+.2f} points (target |change| <= 0.3: "
          f"{'met' if abs(res['acc_change_points']) <= 0.3 else 'MISSED'})")
    res["breakdown"] = b["overhead"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory of MNIST-format IDX files (.gz or not)")
    ap.add_argument("--epochs", type=int, default=4, help="initial training epochs")
    ap.add_argument("--retrain", type=int, default=2, help="retraining epochs after each pruning step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write model.onnx, model.dcz and results.json here (default: a temporary directory)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_data(args.data)
    print(f"data: {args.data}: {len(x_tr)} training, {len(x_te)} test images")

    model = make_model(torch)
    train(torch, model, x_tr, y_tr, args.epochs, 1e-3, args.seed)
    acc_dense = accuracy_torch(torch, model, x_te, y_te)
    print(f"dense: {args.epochs} epochs, test accuracy {100 * acc_dense:.2f}% ({time.perf_counter() - t0:.0f} s)")
    masks = None
    for step, frac in enumerate(SCHEDULE):
        masks = magnitude_masks(torch, model, frac)
        with torch.no_grad():
            for name, m in masks.items():
                getattr(model, name).weight.mul_(m)
        train(torch, model, x_tr, y_tr, args.retrain, 5e-4, args.seed + 1 + step, masks)
        sp = {n: float((getattr(model, n).weight == 0).float().mean()) for n in TARGETS}
        print(f"prune step {step + 1}: sparsity " + ", ".join(f"{n} {v:.1%}" for n, v in sp.items())
              + f"; after {args.retrain} epochs retraining: {100 * accuracy_torch(torch, model, x_te, y_te):.2f}%")
    weights = sum(getattr(model, n).weight.numel() for n in TARGETS)
    zeros = sum(int((getattr(model, n).weight == 0).sum()) for n in TARGETS)
    print(f"pruned: {zeros / weights:.1%} of the {weights:,} weights are zero "
          f"({sum(p.numel() for p in model.parameters()):,} parameters with biases)")

    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or tmp
        os.makedirs(d, exist_ok=True)
        onnx_path, dcz_path = os.path.join(d, "model.onnx"), os.path.join(d, "model.dcz")
        torch.onnx.export(model, (torch.zeros(1, 784),), onnx_path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        acc_fp32 = accuracy_session(ort.InferenceSession(onnx_path), x_te, y_te)
        print(f"exported {onnx_path}: {os.path.getsize(onnx_path):,} bytes; ONNX Runtime test accuracy "
              f"{100 * acc_fp32:.2f}% (torch {100 * accuracy_torch(torch, model, x_te, y_te):.2f}%)")

        results = []
        for label, extra in (("the requested command", []), ("the same with --min-size 0 (fc3 too)", ["--min-size", "0"])):
            cmd = dcconvert_cmd(onnx_path, dcz_path, *extra)
            shown = "dcconvert " + " ".join(shlex.quote(os.path.relpath(c, d) if os.path.isabs(c) and c.startswith(d)
                                                        else c) for c in cmd[1:])
            t1 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr, file=sys.stderr)
                return 1
            print(f"\n$ {shown}    ({time.perf_counter() - t1:.1f} s)\n{p.stdout.rstrip()}")
            res = report(label, onnx_path, dcz_path, acc_fp32, x_te, y_te, verbose=not extra)
            res["command"] = shown
            results.append(res)
        if args.keep:
            with open(os.path.join(d, "results.json"), "w") as f:
                json.dump(results, f, indent=1)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    main_res = results[0]
    return 0 if (main_res["dcz_over_bound"] <= 1.10 and main_res["onnx_over_dcz"] >= 35
                 and abs(main_res["acc_change_points"]) <= 0.3) else 1


if __name__ == "__main__":
    sys.exit(main())
