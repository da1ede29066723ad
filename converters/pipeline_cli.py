"""`dcz pipeline`: train (optionally), prune with retraining, share weights with centroid
fine-tuning and write a .dcz -- a PyTorch model built by your factory, MNIST-format data.

    dcz pipeline --model converters.pipeline:mnist_mlp --data /usr/share/datasets/fashion-mnist \\
        --epochs 5 --sparsity 'fc1*=0.95,fc2*=0.95,0.9' --bits 5 -o fashion.dcz

PyTorch is imported only when the command runs, so ``dcz --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import sys

import click

from dcformat.cliutil import _escape
from dcformat.errors import first_line
from dcformat.table import render

from .errors import ConvertError


# --------------------------------------------------------------------------- shared with `dcz demo`


def print_layer_table(rows: list[dict], plan: dict | None = None, file=None) -> None:
    """The per-layer table of a written .dcz (rows from :func:`converters.pipeline.tensor_rows`)."""
    plan = plan or {}
    cols = ["tensor", "shape", "params", "encoding", "sparsity", "bits", "centroids", "gap bits", "bytes", "bits/param",
            "x fp32"]
    body = []
    for r in rows:
        p = plan.get(r["name"], {})
        body.append([r["name"], r["shape"], f"{r['params']:,}", r["encoding"], f"{r['sparsity']:.1%}",
                     str(p["bits"]) if p.get("bits") else "-",
                     "-" if r["codebook"] is None else str(r["codebook"]),
                     "-" if r["gap_bits"] is None else str(r["gap_bits"]), f"{r['bytes']:,}",
                     f"{8 * r['bytes'] / max(r['params'], 1):.2f}",
                     f"{r['ratio']:.1f}" if math.isfinite(r["ratio"]) else "-"])
    params = sum(r["params"] for r in rows)
    nbytes = sum(r["bytes"] for r in rows)
    zeros = sum(r["sparsity"] * r["params"] for r in rows)
    footer = ["total", "", f"{params:,}", "", f"{zeros / max(params, 1):.1%}", "", "", "", f"{nbytes:,}",
              f"{8 * nbytes / max(params, 1):.2f}", f"{4 * params / max(nbytes, 1):.1f}"]
    render(None, cols, body, right=set(cols) - {"tensor", "shape", "encoding"}, file=file, footer=footer,
           drop=["gap bits", "centroids", "bits/param", "encoding", "x fp32", "shape"])


def accuracy_lines(acc: dict, ort_acc: float | None = None) -> list[str]:
    lines = [f"accuracy: dense {acc['dense']:.2f}%, pruned {acc['pruned']:.2f}%, weight-shared {acc['quantized']:.2f}%, "
             f"after centroid fine-tuning {acc['compressed']:.2f}% ({acc['compressed'] - acc['dense']:+.2f} points)"]
    if ort_acc is not None:
        lines.append(f"accuracy of the .dcz decoded into ONNX Runtime: {ort_acc:.2f}%")
    return lines


def size_lines(path: str, dcz_bytes: int, params: int, onnx_bytes: int | None) -> list[str]:
    fp32 = 4 * params
    line = f"wrote {path}: {dcz_bytes:,} bytes for {params:,} parameters (fp32 {fp32:,} bytes"
    line += f", ONNX {onnx_bytes:,} bytes)" if onnx_bytes else ")"
    ratio = f"compression: {fp32 / dcz_bytes:.1f}x vs fp32 weights"
    if onnx_bytes:
        ratio += f", {onnx_bytes / dcz_bytes:.1f}x vs the ONNX file"
    return [line, ratio]


# --------------------------------------------------------------------------- the command


def _shape(text: str) -> tuple[int, ...]:
    from .settings import SettingError, shape

    try:
        return shape(text, example="1,1,28,28")
    except SettingError as e:
        raise click.BadParameter(str(e), param_hint="--input-shape") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def _factory(spec: str):
    import importlib

    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise click.BadParameter(f"takes package.module:factory, got {spec!r}", param_hint="--model")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConvertError(f"--model {spec}: {first_line(e)}") from None
    if not callable(fn):
        raise ConvertError(f"--model {spec}: {attr} is not callable")
    return fn


def _load_checkpoint(model, path: str) -> None:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        raise ConvertError(f"{path}: not a readable state_dict ({first_line(e)}); only plain state_dicts are "
                           "loaded (weights_only=True)") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    try:
        model.load_state_dict(obj)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: the state_dict does not fit the model: {first_line(e)}") from None


def _reshape(ds, input_shape):
    import numpy as np

    sample = ds.sample_shape
    if input_shape is None:
        return ds, (1, *sample)
    if int(np.prod(input_shape[1:])) != int(np.prod(sample)):
        raise click.BadParameter(f"{'x'.join(map(str, input_shape))} does not hold one {'x'.join(map(str, sample))} "
                                 f"sample of {ds.name}", param_hint="--input-shape")
    ds.x_train = ds.x_train.reshape(len(ds.x_train), *input_shape[1:])
    ds.x_test = ds.x_test.reshape(len(ds.x_test), *input_shape[1:])
    return ds, tuple(input_shape)


def _check_model(model, x, classes: int, spec: str) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConvertError(f"--model {spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    try:
        with torch.no_grad():
            out = model.eval()(torch.as_tensor(x[:2]))
    except Exception as e:  # noqa: BLE001 - whatever the model raises on a wrong input
        raise ConvertError(f"--model {spec}: fails on input of shape {'x'.join(map(str, x[:2].shape))}: {first_line(e)}"
                           " (see --input-shape)") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < classes:
        shape = "x".join(map(str, getattr(out, "shape", ()))) or type(out).__name__
        raise ConvertError(f"--model {spec}: gives {shape}, expected logits of shape batch x {classes} classes")


def run_pipeline(*, model_spec, data, input_shape=None, output, checkpoint=None, settings=None, report_dir=None,
                 limit_train=None, limit_test=None, echo=click.echo, epoch_progress=None) -> dict:
    """What `dcz pipeline` does; returns its figures (also for tests)."""
    import torch

    from . import data as dmod
    from . import pipeline as P

    ds = dmod.load(data)
    ds.x_train, ds.y_train = ds.x_train[:limit_train], ds.y_train[:limit_train]
    ds.x_test, ds.y_test = ds.x_test[:limit_test], ds.y_test[:limit_test]
    if not len(ds.x_train) or not len(ds.x_test):
        raise ConvertError(f"{data}: no training or no test samples")
    ds, shape = _reshape(ds, input_shape)
    echo(ds.describe())
    torch.manual_seed(settings.seed if settings else 0)
    model = _factory(model_spec)()
    if checkpoint:
        _check_model(model, ds.x_train, ds.classes, model_spec)
        _load_checkpoint(model, checkpoint)
    _check_model(model, ds.x_train, ds.classes, model_spec)
    s = settings or P.Settings()
    evaluate = P.accuracy_fn(ds.x_test, ds.y_test)
    res = P.deep_compress(model, (ds.x_train, ds.y_train), evaluate, s, out=output, input_shape=shape,
                          progress=P.echo_stages(echo, epoch_progress), report_dir=report_dir, dataset=f"{ds.name} test split ({len(ds.x_test):,})",
                          source={"model": model_spec, "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
                                  "data": ds.name})
    ort_acc = P.ort_accuracy(output, ds.x_test, ds.y_test)
    return {"result": res, "ort_accuracy": ort_acc, "dataset": ds.describe()}


@click.command("pipeline", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "model_spec", required=True, metavar="PKG.MODULE:FACTORY",
              help="function building the torch.nn.Module (imports and runs your code), e.g. converters.pipeline:mnist_mlp")
@click.option("--data", required=True, metavar="DIR|digits",
              help="directory of MNIST-format IDX files (train-images-idx3-ubyte.gz, ...), or 'digits' (scikit-learn 8x8)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="the .dcz to write")
@click.option("--input-shape", metavar="D,D,...", help="model input shape with batch 1, e.g. 1,1,28,28 or 1,784 "
              "(samples are reshaped to it; default: the data's own sample shape)")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="state_dict to load into the model (torch.load weights_only=True)")
@click.option("--epochs", type=click.IntRange(0), help="train the dense model first (default 0 with --checkpoint, else 5)")
@click.option("--retrain-epochs", type=click.IntRange(0), default=2, show_default=True, help="retraining after each pruning step")
@click.option("--finetune-epochs", type=click.IntRange(0), default=2, show_default=True, help="centroid fine-tuning epochs")
@click.option("--sparsity", metavar="[PATTERN=]F,...", help="target fraction of pruned weights per layer "
              "(default 0.9 fc, 0.6 conv), e.g. 0.9 or 'fc3*=0.7,0.92'; patterns match parameter names")
@click.option("--bits", metavar="[PATTERN=]B,...", help="weight-sharing bits 1..8 per layer (default 5 fc, 8 conv)")
@click.option("--prune-neurons", metavar="[PATTERN=]F,...",
              help="also prune this fraction of whole output neurons / filters (smallest L2 norm; shapes kept)")
@click.option("--schedule", default="0.5,0.75,0.9,1", show_default=True, metavar="F,...",
              help="pruning steps as fractions of each layer's target, retraining after each")
@click.option("--separate-phases", is_flag=True, help="prune the conv layers first, then the fully connected ones")
@click.option("--max-accuracy-drop", type=click.FloatRange(0), metavar="POINTS",
              help="choose each layer's sparsity and bits by a sensitivity scan to make the file smallest within this "
              "accuracy loss (layers given in --sparsity / --bits keep those values); checks and backs off")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="learning rate (retraining lr/2, fine-tuning lr/4 unless given)")
@click.option("--retrain-lr", type=click.FloatRange(0, min_open=True))
@click.option("--finetune-lr", type=click.FloatRange(0, min_open=True))
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--l1", type=click.FloatRange(0), default=0.0, show_default=True, help="L1 penalty on the weights while retraining")
@click.option("--l2", type=click.FloatRange(0), default=0.0, show_default=True, help="L2 penalty on the weights while retraining")
@click.option("--init", type=click.Choice(["linear", "density", "forgy", "kmeans++"]), default="linear", show_default=True,
              help="k-means centroid initialisation")
@click.option("--min-size", type=click.IntRange(0), default=0, show_default=True,
              help="Linear/Conv weights with fewer elements are stored exactly")
@click.option("--scan-sparsities", default=",".join(map(str, (0.5, 0.7, 0.8, 0.9, 0.95, 0.98))), show_default=True,
              metavar="F,...", help="sparsities of the sensitivity scan")
@click.option("--scan-bits", default="2,3,4,5,6,8", show_default=True, metavar="B,...", help="bits of the sensitivity scan")
@click.option("--report-dir", type=click.Path(file_okay=False), help="write report.json and the sensitivity plots here")
@click.option("--limit-train", type=click.IntRange(1), help="use only the first N training samples")
@click.option("--limit-test", type=click.IntRange(1), help="use only the first N test samples")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice; 1 is often "
              "faster for small models or on a busy machine)")
@click.option("-q", "--quiet", is_flag=True, help="only the result lines")
def pipeline(model_spec, data, output, input_shape, checkpoint, epochs, retrain_epochs, finetune_epochs, sparsity, bits,
             prune_neurons, schedule, separate_phases, max_accuracy_drop, lr, retrain_lr, finetune_lr, batch_size,
             optimizer, l1, l2, init, min_size, scan_sparsities, scan_bits, report_dir, limit_train, limit_test, seed,
             threads, quiet):
    """Deep Compression with training data: prune + retrain, share weights + fine-tune centroids, write OUTPUT.

    Evaluates on the test split; prints the per-layer table, the accuracy before and after
    and the compression ratio.
    """
    from .settings import SettingError

    outdir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(outdir):
        raise ConvertError(f"cannot write {output}: directory {outdir} does not exist")
    if os.path.isdir(output):
        raise ConvertError(f"cannot write {output}: it is a directory")
    if data != "digits" and not os.path.isdir(data):
        raise click.BadParameter(f"{data!r} is neither a directory nor 'digits'", param_hint="--data")
    shape = _shape(input_shape) if input_shape else None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConvertError("dcz pipeline needs PyTorch: pip install 'dcz[torch]' (torch==2.13.0)") from None
    from . import pipeline as P

    if threads:
        torch.set_num_threads(threads)
    try:
        s = P.Settings(sparsity=sparsity, bits=bits, prune_neurons=prune_neurons, schedule=_floats(schedule),
                       separate_phases=separate_phases, epochs=(0 if checkpoint else 5) if epochs is None else epochs,
                       retrain_epochs=retrain_epochs, finetune_epochs=finetune_epochs, lr=lr, retrain_lr=retrain_lr,
                       finetune_lr=finetune_lr, batch_size=batch_size, optimizer=optimizer, l1=l1, l2=l2, init=init,
                       min_size=min_size, max_accuracy_drop=max_accuracy_drop, scan_sparsities=_floats(scan_sparsities),
                       scan_bits=_floats(scan_bits), seed=seed)
    except (SettingError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    echo = (lambda *a, **k: None) if quiet else click.echo
    tty = P.console_progress(epochs=True, stages=False) if not quiet else None
    try:
        f = run_pipeline(model_spec=model_spec, data=data, input_shape=shape, output=output, checkpoint=checkpoint,
                         settings=s, report_dir=report_dir, limit_train=limit_train, limit_test=limit_test, echo=echo,
                         epoch_progress=tty)
    except SettingError as e:
        raise click.UsageError(str(e)) from None
    except RuntimeError as e:  # what torch raises when the model and the data do not fit
        raise ConvertError(f"--model {model_spec}: {first_line(e)}") from None
    res = f["result"]
    if not quiet:
        print_layer_table(res.rows, res.plan)
    for note in res.notes:
        click.echo(f"note: {_escape(note)}")
    for line in accuracy_lines(res.accuracy, f["ort_accuracy"]) + size_lines(output, res.dcz_bytes, res.params,
                                                                             res.onnx_bytes):
        click.echo(line)
    if res.within_budget is False:
        click.echo(f"warning: over the accuracy budget of {max_accuracy_drop} points", err=True)
    if report_dir:
        click.echo(f"report: {os.path.join(report_dir, 'report.json')}"
                   + (" and sensitivity plots" if res.scan else ""))
    if not quiet:
        t = res.seconds
        click.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    sys.stdout.flush()
