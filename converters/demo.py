"""`dcz demo`: the whole Deep Compression loop on scikit-learn's 8x8 digits, no download.

Train an MLP, prune it with retraining, share weights (k-means, 5 bits) with centroid
fine-tuning, write a .dcz, decode it into ONNX Runtime and compare accuracy and size.
"""

from __future__ import annotations

import math
import os
import time

import click
import numpy as np

import dcformat
from dcformat.cliutil import run
from dcformat.table import render

from .mlp import MLP
from .prune import magnitude_mask
from .quantize import quantize


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def build(out: str, sparsity: float = 0.9, bits: int = 5, seed: int = 0, echo=print) -> dict:
    """Run the demo pipeline, write ``out``; returns the figures."""
    xtr, ytr, xte, yte = load_digits_split(seed)
    net = MLP([64, 256, 128, 10], seed=seed)
    t0 = time.perf_counter()
    net.train(xtr, ytr, epochs=40, lr=2e-3, seed=seed)
    dense_acc = net.accuracy(xte, yte)
    echo(f"trained 64-256-128-10 MLP: test accuracy {dense_acc:.2f}%")
    for s in (0.5, 0.75, sparsity):  # iterative pruning, retraining with masks
        net.masks = [magnitude_mask(w, s) for w in net.W]
        for w, m in zip(net.W, net.masks):
            w *= m
        net.train(xtr, ytr, epochs=15, lr=1e-3, seed=seed)
        echo(f"pruned to {s:.0%} and retrained: test accuracy {net.accuracy(xte, yte):.2f}%")
    pruned_acc = net.accuracy(xte, yte)
    codebooks, indices = [], []
    for i, w in enumerate(net.W):
        cb, ix = quantize(w, bits, init="linear", seed=seed)
        codebooks.append(cb.astype(np.float32))
        indices.append(ix)
        net.W[i] = codebooks[-1][ix]
    quant_acc = net.accuracy(xte, yte)
    net.finetune_centroids(xtr, ytr, codebooks, indices, epochs=10, lr=1e-3, seed=seed)
    acc = net.accuracy(xte, yte)
    echo(f"shared weights ({bits} bits): {quant_acc:.2f}%, after centroid fine-tuning {acc:.2f}%")

    model = net.to_onnx()
    graph, arrays = dcformat.graph.strip_weights(model)
    tensors = []
    for i in range(len(net.W)):
        wname, bname = f"fc{i + 1}.weight", f"fc{i + 1}.bias"
        tensors.append(dcformat.encode_codebook(wname, codebooks[i], indices[i], dtype="float32"))
        tensors.append(dcformat.encode(bname, arrays[bname]))
    metadata = {
        "producer": f"dcz demo {dcformat.__version__}",
        "source": "sklearn digits 8x8, MLP 64-256-128-10 trained by the demo",
        "settings": {"sparsity": sparsity, "bits": bits, "init": "linear", "seed": seed},
        "accuracy": {"dense": round(dense_acc, 4), "pruned": round(pruned_acc, 4), "compressed": round(acc, 4),
                     "dataset": "digits test split (360 images)"},
    }
    size = dcformat.write(out, tensors, graph=graph, metadata=metadata)
    train_s = time.perf_counter() - t0

    # decode and run the file in ONNX Runtime, as a user would
    sess = dcformat.InferenceSession(out)
    logits = sess.run(None, {"input": xte})[0]
    ort_acc = float(np.mean(logits.argmax(1) == yte) * 100)
    params = sum(w.size + b.size for w, b in zip(net.W, net.b))
    onnx_bytes = len(model.SerializeToString())
    return {"path": out, "dense_accuracy": dense_acc, "accuracy": ort_acc, "params": params,
            "fp32_bytes": params * 4, "onnx_bytes": onnx_bytes, "dcz_bytes": size, "seconds": train_s}


def layer_table(path: str) -> list[dict]:
    rows = []
    with dcformat.open(path) as r:
        for name in r:
            info = r.info(name)
            arr = r[name]
            rows.append({
                "name": name, "shape": "x".join(map(str, info.shape)) or "()", "params": info.numel,
                "encoding": info.encoding, "sparsity": float(np.mean(arr == 0)) if arr.size else 0.0,
                "codebook": info.codebook_size, "gap_bits": info.gap_bits, "bytes": info.nbytes,
                "ratio": info.decoded_nbytes / info.nbytes if info.nbytes else math.inf,
            })
    return rows


def print_table(rows):
    cols = ["tensor", "shape", "params", "encoding", "sparsity", "codebook", "gap b", "bytes", "bits/param", "x fp32"]
    body = [[r["name"], r["shape"], f"{r['params']:,}", r["encoding"], f"{r['sparsity']:.1%}",
             "-" if r["codebook"] is None else str(r["codebook"]), "-" if r["gap_bits"] is None else str(r["gap_bits"]),
             f"{r['bytes']:,}", f"{8 * r['bytes'] / max(r['params'], 1):.2f}", f"{r['ratio']:.1f}"] for r in rows]
    render(None, cols, body, right=set(cols) - {"tensor", "shape", "encoding"})


@click.command()
@click.option("-o", "--output", default="demo.dcz", show_default=True, help="where to write the .dcz")
@click.option("--sparsity", default=0.9, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--bits", default=5, show_default=True, type=click.IntRange(1, 8))
@click.option("--seed", default=0, show_default=True, type=int)
def demo(output, sparsity, bits, seed):
    """Train, prune, quantize and Huffman-code a digits MLP; write, decode and run the .dcz."""
    f = build(output, sparsity, bits, seed, echo=click.echo)
    print_table(layer_table(output))
    click.echo(f"wrote {f['path']}: {f['dcz_bytes']:,} bytes for {f['params']:,} parameters "
               f"(fp32 {f['fp32_bytes']:,} bytes, ONNX {f['onnx_bytes']:,} bytes)")
    click.echo(f"compression: {f['fp32_bytes'] / f['dcz_bytes']:.1f}x vs fp32 weights, "
               f"{f['onnx_bytes'] / f['dcz_bytes']:.1f}x vs the ONNX file")
    click.echo(f"accuracy in ONNX Runtime from the .dcz: {f['accuracy']:.2f}% (dense model {f['dense_accuracy']:.2f}%)")
    click.echo(f"done in {f['seconds']:.1f} s")


@click.group()
@click.version_option(dcformat.__version__, prog_name="dcz")
def cli():
    """dcz: Deep Compression model files."""


cli.add_command(demo)


def main(argv=None):
    run(cli, argv, prog_name="dcz")
