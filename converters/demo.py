"""`dcz demo`: the whole Deep Compression loop on scikit-learn's 8x8 digits, no download.

Train a 64-256-128-10 PyTorch MLP, prune it to 90% with retraining (masks enforced), share
its weights with k-means (5 bits) and fine-tune the centroids, write a .dcz, decode it into
ONNX Runtime and compare accuracy and size. Deterministic: the same options give the same
file, byte for byte (seeded, one thread, deterministic algorithms).
"""

from __future__ import annotations

import time

import click

import dcformat
from dcformat.cliutil import check_output, run

from .errors import ConvertError
from .pipeline_cli import accuracy_lines, print_layer_table, size_lines

# the demo's training recipe (a few seconds on two cores)
DEMO_TRAINING = {"epochs": 30, "retrain_epochs": 4, "finetune_epochs": 4, "lr": 2e-3, "l2": 1e-5, "batch_size": 64}


def build(out: str, sparsity: float | None = 0.9, bits: int | None = 5, seed: int = 0, echo=print,
          max_accuracy_drop: float | None = None, report_dir=None, epoch_progress=None) -> dict:
    """Run the demo pipeline, write ``out``; returns the figures.

    With ``max_accuracy_drop`` the per-layer sparsity and bits come from the sensitivity scan
    (``sparsity`` / ``bits`` given as None), else every layer gets ``sparsity`` and ``bits``."""
    import numpy as np

    try:
        import torch
    except ImportError:
        raise ConvertError("dcz demo needs PyTorch: pip install 'dcz[demo]' (torch==2.13.0)") from None
    from . import pipeline as P
    from .data import load_digits

    t0 = time.perf_counter()
    ds = load_digits(seed)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # the same sums in the same order, run after run
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        model = P.digits_mlp()
        settings = P.Settings(sparsity=sparsity, bits=bits, max_accuracy_drop=max_accuracy_drop, seed=seed,
                              **DEMO_TRAINING)
        evaluate = P.accuracy_fn(ds.x_test, ds.y_test)
        res = P.deep_compress(model, (ds.x_train, ds.y_train), evaluate, settings, out=out,
                              progress=P.echo_stages(echo, epoch_progress),
                              report_dir=report_dir, dataset=f"digits test split ({len(ds.x_test)} images)",
                              source="sklearn digits 8x8, MLP 64-256-128-10 trained by the demo")
        torch_pred = P.predict(model, ds.x_test).numpy()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    compress_s = time.perf_counter() - t0

    # decode and run the file in ONNX Runtime, as a user would
    ort_pred = P.ort_predict(out, ds.x_test)
    ort_acc = float(np.mean(ort_pred == ds.y_test) * 100)
    return {"path": out, "dense_accuracy": res.accuracy["dense"], "pruned_accuracy": res.accuracy["pruned"],
            "torch_accuracy": res.accuracy["compressed"], "accuracy": ort_acc,
            "same_predictions": bool(np.array_equal(ort_pred, torch_pred)), "params": res.params,
            "fp32_bytes": res.fp32_bytes, "onnx_bytes": res.onnx_bytes, "dcz_bytes": res.dcz_bytes,
            "seconds": compress_s, "result": res}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", help="where to write the .dcz  [default: demo.dcz]")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True),
              help="fraction of weights pruned in every layer  [default: 0.9; chosen per layer with --max-accuracy-drop]")
@click.option("--bits", type=click.IntRange(1, 8),
              help="weight-sharing bits  [default: 5; chosen per layer with --max-accuracy-drop]")
@click.option("--max-accuracy-drop", type=click.FloatRange(0), metavar="POINTS",
              help="pick each layer's sparsity and bits by a sensitivity scan within this accuracy budget")
@click.option("--report-dir", type=click.Path(file_okay=False), help="write report.json and the sensitivity plots here")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("-f", "--force", is_flag=True, help="replace an existing demo.dcz (an output named with -o is replaced)")
def demo(output, sparsity, bits, max_accuracy_drop, report_dir, seed, force):
    """Train, prune, quantize and Huffman-code a digits MLP; write, decode and run the .dcz."""
    import os

    from .pipeline import console_progress

    if output is None:
        output = "demo.dcz"
        if os.path.lexists(output) and not force:  # not named by the user: never replaced silently
            raise click.UsageError(f"{output} exists; replace it with --force, or name another output with -o")
    check_output(output)
    if max_accuracy_drop is None:
        sparsity = 0.9 if sparsity is None else sparsity
        bits = 5 if bits is None else bits
    f = build(output, sparsity, bits, seed, echo=click.echo, max_accuracy_drop=max_accuracy_drop, report_dir=report_dir,
              epoch_progress=console_progress(epochs=True, stages=False))
    res = f["result"]
    print_layer_table(res.rows, res.plan)
    for line in size_lines(f["path"], f["dcz_bytes"], f["params"], f["onnx_bytes"]):
        click.echo(line)
    for line in accuracy_lines(res.accuracy, f["accuracy"]):
        click.echo(line)
    click.echo(f"ONNX Runtime and PyTorch predictions {'agree on every' if f['same_predictions'] else 'DIFFER on some'} "
               "test image")
    if report_dir:
        click.echo(f"report: {report_dir}")
    click.echo(f"done in {f['seconds']:.1f} s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dcformat.__version__, prog_name="dcz", message="%(prog)s %(version)s")
def cli():
    """dcz: Deep Compression model files."""


def _add_pipeline():
    from .pipeline_cli import pipeline

    cli.add_command(pipeline)


cli.add_command(demo)
_add_pipeline()


def main(argv=None):
    run(cli, argv, prog_name="dcz")
