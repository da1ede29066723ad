"""dcconvert: PyTorch / ONNX / safetensors checkpoint -> .dcz (pruning, weight sharing, Huffman coding)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
import time

import click

import dcformat
from dcformat.cliutil import _escape, check_distinct, check_output, run, times_smaller
from dcformat.table import render

from . import compress as cmp
from . import settings as st
from .errors import ConvertError
from .quantize import INITS


def _shape(text: str) -> tuple[int, ...]:
    try:
        return st.shape(text)
    except st.SettingError as e:
        raise click.BadParameter(str(e), param_hint="--input-shape") from None


def _layer(option, text, convert):
    try:
        return st.LayerSetting.parse(option, text, convert)
    except st.SettingError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1], param_hint=option) from None


def _progress():
    """A callback drawing a progress bar over layers on a terminal (stderr), or None."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("compressing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[layer]}"), transient=True, console=Console(file=sys.stderr))
    task = prog.add_task("layers", total=None, layer="")

    def update(done, total, name):
        prog.update(task, completed=done, total=total, layer=_escape(name)[-50:])

    return prog, update


def summary(result: dict) -> None:
    cols = ["tensor", "shape", "params", "action", "sparsity", "bits", "encoding", "gap b", "bytes", "x fp32"]
    rows = [[r["name"], "x".join(map(str, r["shape"])) or "()", f"{r['params']:,}", r["action"], f"{r['sparsity']:.1%}",
             "-" if r["bits"] is None else str(r["bits"]), r["encoding"], "-" if r["gap_bits"] is None else str(r["gap_bits"]),
             f"{r['bytes']:,}", "-" if r["ratio"] is None else f"{r['ratio']:.1f}"] for r in result["layers"]]
    t = result["totals"]
    footer = ["total", "", f"{t['params']:,}", "", f"{t['sparsity']:.1%}", "", "", "", f"{t['tensor_bytes']:,}",
              f"{t['params'] * 4 / max(t['tensor_bytes'], 1):.1f}"]
    render(None, cols, rows, right=set(cols) - {"tensor", "shape", "action", "encoding"}, footer=footer)
    click.echo(f"{_escape(result['source']['file'])} ({result['source']['kind']}, {result['source']['bytes']:,} bytes) -> "
               f"{_escape(result['output'])} ({result['dcz_bytes']:,} bytes): {times_smaller(result['ratio'])}; "
               f"{t['params']:,} parameters, {8 * result['dcz_bytes'] / max(t['params'], 1):.2f} bits/param; "
               f"{result['seconds']:.1f} s")
    for note in result["source"]["notes"]:
        click.echo(f"note: {_escape(note)}")


def convert(src_path, out, s: cmp.Settings, *, input_shapes=None, trust_code=False, model_factory=None, opset=None,
            progress=None, trust_pickle=False) -> dict:
    """Convert one file; returns the report (also used by --json and --report)."""
    from . import sources

    t0 = time.perf_counter()
    src = sources.load(src_path, input_shapes=input_shapes, trust_code=trust_code or trust_pickle, model_factory=model_factory,
                       opset=opset)
    names = list(src.weights)
    for setting in s.all():
        for pat, _ in setting.patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise click.UsageError(f"{setting.option}: pattern {pat!r} matches no tensor of {src_path}")
    tensors, rows = cmp.compress(src, s, progress)
    params = sum(r["params"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    meta = {
        "producer": f"dcconvert (dcz {dcformat.__version__})",
        "source": {"file": os.path.basename(src.path), "kind": src.kind, "sha256": src.sha256, "bytes": src.size},
        "settings": s.describe(),
    }
    try:
        size = dcformat.write(out, tensors, graph=src.graph, metadata=meta)
    except OSError as e:  # the temporary file beside it, or the rename
        raise ConvertError(f"cannot write {out}: {e.strerror or e}") from None
    return {
        "source": {"file": src.path, "kind": src.kind, "sha256": src.sha256, "bytes": src.size, "notes": src.notes},
        "output": os.fspath(out), "dcz_bytes": size, "ratio": src.size / size if size else None,
        "settings": s.describe(), "layers": rows,
        "totals": {"params": params, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params if params else 0.0,
                   "tensor_bytes": sum(r["bytes"] for r in rows), "fp32_bytes": params * 4},
        "seconds": time.perf_counter() - t0,
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="the .dcz to write (default: MODEL with .dcz)")
@click.option("--sparsity", metavar="[PATTERN=]F,...", help="fraction of weights to prune per layer, in [0, 1) "
              f"(default {cmp.DEFAULT_SPARSITY['conv']} conv, {cmp.DEFAULT_SPARSITY['fc']} fc; 0 keeps an already pruned model), "
              "e.g. 0.9 or 'fc*=0.92,conv*=0.6'")
@click.option("--threshold-std", metavar="[PATTERN=]Q,...", help="also prune weights below Q x the layer's standard deviation")
@click.option("--threshold", metavar="[PATTERN=]T,...", help="also prune weights with |w| <= T")
@click.option("--prune-neurons", metavar="[PATTERN=]F,...",
              help="prune this fraction of whole output neurons / conv filters (smallest L2 norm); shapes are kept")
@click.option("--bits", metavar="[PATTERN=]B,...", help="weight-sharing bits 1..8 (codebook of 2**B centroids; "
              f"default {cmp.DEFAULT_BITS['conv']} conv, {cmp.DEFAULT_BITS['fc']} fc)")
@click.option("--init", type=click.Choice(INITS), default="linear", show_default=True, help="k-means centroid initialisation")
@click.option("--min-size", type=click.IntRange(0), default=cmp.DEFAULT_MIN_SIZE, show_default=True,
              help="tensors with fewer elements are stored exactly (biases, norms and small tensors always are)")
@click.option("--lossless", is_flag=True, help="no pruning, no quantization: decoding gives bit-identical weights")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D,D,...",
              help="input shape for exporting TorchScript / nn.Module / --model to ONNX (repeat per input; batch stays dynamic)")
@click.option("--opset", type=click.IntRange(7, 23), help="ONNX opset for exported PyTorch models")
@click.option("--model", "model_factory", metavar="PKG.MODULE:FACTORY",
              help="build the model with this function so a state_dict gets its graph (imports and runs that "
              "module: needs --trust-code)")
@click.option("--trust-code", "--trust-pickle", "trust_code", is_flag=True,
              help="allow the loaders that RUN CODE FROM THE FILE, to get a graph: torch.load(weights_only=False) "
              "for pickled nn.Modules, torch.jit.load for TorchScript (its __setstate__ can read and write files), "
              "torch.export.load for .pt2 (evaluates shape expressions as Python), and --model's import. Without "
              "it TorchScript and .pt2 give their weights only. Only for files you trust")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="seed of random centroid initialisations")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of the table")
@click.option("--report", type=click.Path(dir_okay=False), help="also save the JSON report to this file")
@click.option("-q", "--quiet", is_flag=True, help="no table, no progress bar")
def dcconvert(model, output, sparsity, threshold_std, threshold, prune_neurons, bits, init, min_size, lossless,
              input_shapes, opset, model_factory, trust_code, seed, as_json, report, quiet):
    """Compress MODEL (ONNX, PyTorch .pt/.pth/.bin/.pt2/TorchScript, safetensors) into a .dcz file."""
    if lossless and any(x is not None for x in (sparsity, threshold_std, threshold, prune_neurons, bits)):
        raise click.UsageError("--lossless excludes --sparsity, --threshold-std, --threshold, --prune-neurons and --bits")
    s = cmp.Settings(
        sparsity=_layer("--sparsity", sparsity, st.fraction),
        threshold_std=_layer("--threshold-std", threshold_std, st.nonneg),
        threshold=_layer("--threshold", threshold, st.nonneg),
        prune_neurons=_layer("--prune-neurons", prune_neurons, st.fraction),
        bits=_layer("--bits", bits, st.bits),
        init=init, min_size=min_size, lossless=lossless, seed=seed,
    )
    shapes = [_shape(x) for x in input_shapes]
    out = output or os.path.splitext(model)[0] + ".dcz"
    check_distinct({"the output": out, **({"--report": report} if report else {})}, {"the input": model})
    check_output(out)
    if report:
        check_output(report, "report")
    prog, update = (None, None) if quiet or as_json else _progress()
    if prog:
        prog.start()
    try:
        result = convert(model, out, s, input_shapes=shapes, trust_code=trust_code, model_factory=model_factory,
                         opset=opset, progress=update)
    finally:
        if prog:
            prog.stop()
    if report:
        from dcformat.atomic import atomic_output

        try:
            with atomic_output(report) as f:
                f.write(json.dumps(result, indent=1, default=str).encode())
        except OSError as e:  # all or nothing: the .dcz just written goes too
            with contextlib.suppress(OSError):
                os.unlink(out)
            raise ConvertError(f"cannot write report {report}: {e.strerror or e} (nothing written)") from None
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    elif not quiet:
        summary(result)


def main(argv=None):
    run(dcconvert, argv, prog_name="dcconvert")
