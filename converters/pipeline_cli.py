"""`dcz pipeline`: train (optionally), prune with retraining, share weights with centroid
fine-tuning and write a .dcz -- a PyTorch model built by your factory; data from MNIST-format IDX
files, an .npz, a folder of images or your own (train, val) Datasets (--data-factory).

    dcz pipeline --model converters.pipeline:mnist_mlp --data /usr/share/datasets/fashion-mnist \\
        --epochs 5 --sparsity 'fc1*=0.95,fc2*=0.95,0.9' --bits 5 -o fashion.dcz
    torchrun --nproc-per-node 2 -m converters.pipeline_cli --model ... --data ... -o out.dcz   # DDP, rank 0 writes

PyTorch is imported only when the command runs, so ``dcz --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import sys

import click

from dcformat import __version__
from dcformat.cliutil import _escape
from dcformat.errors import first_line
from dcformat.table import render

from . import factory
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


def _image_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().replace(",", "x").split("x"))
        if w < 1 or h < 1 or w * h > 1 << 26:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 32x32", param_hint="--image-size") from None
    return w, h


def _device(text: str) -> str:
    import torch

    text = text.strip().lower()
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        text = "cuda"
    if text == "cuda" and "LOCAL_RANK" in os.environ:
        text = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{text!r} is not auto, cpu, cuda or cuda:N", param_hint="--device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter("no CUDA GPU here", param_hint="--device")
        if dev.index is not None:
            torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise click.BadParameter(f"{text!r}: only cpu and cuda are supported", param_hint="--device")
    return str(dev)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def _load_checkpoint(model, path: str) -> list[str]:
    """Load the state_dict at ``path`` into ``model``; the notes to print (which key of a checkpoint dict
    held the weights)."""
    import torch

    from .torch_inputs import _state_dict_of

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        raise ConvertError(f"{path}: not a readable state_dict ({first_line(e)}); only plain state_dicts are "
                           "loaded (weights_only=True)") from None
    notes = []
    factory.load_state_dict(model, _state_dict_of(obj, path, notes), path)
    return notes


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


def _check_model(model, x, classes: int | None, spec: str) -> None:
    import torch

    from .pipeline.loaders import model_device, to_device

    if not isinstance(model, torch.nn.Module):
        raise ConvertError(f"--model {spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    try:
        with torch.no_grad():
            out = model.eval()(to_device(torch.as_tensor(x[:2]), model_device(model)))
    except Exception as e:  # noqa: BLE001 - whatever the model raises on a wrong input
        raise ConvertError(f"--model {spec}: fails on input of shape {'x'.join(map(str, x[:2].shape))}: {first_line(e)}"
                           " (see --input-shape)") from None
    if classes is None:
        return
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < classes:
        shape = "x".join(map(str, getattr(out, "shape", ()))) or type(out).__name__
        raise ConvertError(f"--model {spec}: gives {shape}, expected logits of shape batch x {classes} classes")


class Reshaped:
    """A map-style dataset whose inputs are reshaped to ``shape`` (one sample, no batch axis)."""

    def __init__(self, ds, shape):
        self.ds, self.shape = ds, tuple(shape)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y, *rest = self.ds[i]
        return (x.reshape(self.shape), y, *rest)


class Limited:
    """The first ``n`` items of a map-style dataset."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, min(n, len(ds))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.ds[i]


def _from_factory(spec: str, trust_code: bool = False) -> dict:
    """What a --data-factory gives: (train, val) or a dict with train, val and optionally loss_fn,
    evaluate, metric, unit."""
    got = factory.load(spec, trust_code=trust_code, option="--data-factory")()
    if isinstance(got, (tuple, list)) and len(got) == 2:
        got = {"train": got[0], "val": got[1]}
    if not isinstance(got, dict) or not {"train", "val"} <= set(got):
        raise ConvertError(f"--data-factory {spec}: returned a {type(got).__name__}; expected (train, val) Datasets "
                           "or a dict with 'train' and 'val'")
    unknown = set(got) - {"train", "val", "loss_fn", "evaluate", "metric", "unit", "name"}
    if unknown:
        raise ConvertError(f"--data-factory {spec}: unknown keys {', '.join(sorted(unknown))}")
    return got


def _state_path(output: str) -> str:
    return f"{output}.state"


def run_pipeline(*, model_spec, data=None, input_shape=None, output, checkpoint=None, settings=None, report_dir=None,
                 limit_train=None, limit_test=None, echo=click.echo, epoch_progress=None, data_factory=None,
                 image_size=None, resume=False, device=None, trust_code=False) -> dict:
    """What `dcz pipeline` does; returns its figures (also for tests)."""
    import torch

    from . import data as dmod
    from . import pipeline as P

    s = settings or P.Settings()
    extra = {}
    if data_factory is None and (data == "digits" or not os.path.isdir(data) or dmod.is_idx_dir(data)):
        ds = dmod.load(data)
        ds.x_train, ds.y_train = ds.x_train[:limit_train], ds.y_train[:limit_train]
        ds.x_test, ds.y_test = ds.x_test[:limit_test], ds.y_test[:limit_test]
        if not len(ds.x_train) or not len(ds.x_test):
            raise ConvertError(f"{data}: no training or no test samples")
        ds, shape = _reshape(ds, input_shape)
        train, val, probe, classes = (ds.x_train, ds.y_train), (ds.x_test, ds.y_test), ds.x_train, ds.classes
        name, described, nval = ds.name, ds.describe(), len(ds.x_test)
    else:
        if data_factory is not None:
            extra = _from_factory(data_factory, trust_code)
            train, val = extra.pop("train"), extra.pop("val")
            name, classes = extra.pop("name", data_factory), None
        else:
            train, val = dmod.image_folder(data, size=image_size, seed=s.seed)
            name, classes = train.name, len(train.classes)
        for option, n, which in (("--limit-train", limit_train, "train"), ("--limit-test", limit_test, "val")):
            ds = train if which == "train" else val
            if n and not P.is_dataset(ds):
                raise click.BadParameter(f"takes a Dataset; the {which} data is a {type(ds).__name__}",
                                         param_hint=option)
        train = Limited(train, limit_train) if limit_train else train
        val = Limited(val, limit_test) if limit_test else val
        x0, _ = P.first_batch(train)
        if not isinstance(x0, torch.Tensor):
            raise ConvertError(f"{name}: a batch's input is a {type(x0).__name__}; the pipeline takes one tensor per "
                               "sample (the model's single ONNX input)")
        sample = tuple(x0.shape[1:])
        shape = (1, *sample) if input_shape is None else tuple(input_shape)
        if shape[1:] != sample:
            if int(torch.tensor(shape[1:]).prod()) != int(torch.tensor(sample).prod()) or not (
                    P.is_dataset(train) and P.is_dataset(val)):
                raise click.BadParameter(f"{'x'.join(map(str, shape))} does not hold one {'x'.join(map(str, sample))} "
                                         f"sample of {name} (only Datasets are reshaped)", param_hint="--input-shape")
            train, val = Reshaped(train, shape[1:]), Reshaped(val, shape[1:])
            x0, _ = P.first_batch(train)
        probe = x0
        try:
            ntrain = f"{len(train):,}"
            nval = len(val)
        except TypeError:
            ntrain, nval = "?", None
        described = (f"{name}: {ntrain} training and {'?' if nval is None else f'{nval:,}'} held-out samples of shape "
                     f"{'x'.join(map(str, sample))}" + (f", {classes} classes" if classes else ""))
    echo(described)
    torch.manual_seed(s.seed)
    model = factory.load(model_spec, trust_code=trust_code)()
    if checkpoint:
        _check_model(model, probe, classes, model_spec)
        for note in _load_checkpoint(model, checkpoint):
            echo(f"note: {_escape(note)}")
    if device:
        model = model.to(device)
    _check_model(model, probe, classes, model_spec)
    evaluate = extra.get("evaluate") or (P.accuracy_fn(*val) if P.is_arrays(val) else P.accuracy_fn(val))
    metric, unit = extra.get("metric", "accuracy"), extra.get("unit", "%")
    res = P.deep_compress(model, train, evaluate, s, out=output, input_shape=shape,
                          progress=P.echo_stages(echo, epoch_progress), report_dir=report_dir, loss_fn=extra.get("loss_fn"),
                          dataset=f"{name} {'test split' if P.is_arrays(val) else 'held-out data'}"
                          + (f" ({nval:,})" if nval is not None else ""),
                          source={"model": model_spec, "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
                                  "data": name},
                          metric=metric, unit=unit, state=_state_path(output) if resume else None)
    ort_acc = None
    if P.dist.is_main() and "evaluate" not in extra:
        ort_acc = P.ort_accuracy(output, *val) if P.is_arrays(val) else P.ort_accuracy(output, val)
    return {"result": res, "ort_accuracy": ort_acc, "dataset": described, "metric": metric, "unit": unit}


@click.command("pipeline", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "model_spec", required=True, metavar="PKG.MODULE:FACTORY",
              help="function building the torch.nn.Module, e.g. converters.pipeline:mnist_mlp; one of your own "
              "modules is imported and run only with --trust-code")
@click.option("--data", metavar="DIR|FILE.npz|digits",
              help="directory of MNIST-format IDX files (train-images-idx3-ubyte.gz, ...); an .npz of x and y (or "
              "x_train, y_train, x_test, y_test) arrays; a folder of class subfolders of images (or of train/ and "
              "val/ such folders); or 'digits' (scikit-learn 8x8)")
@click.option("--data-factory", metavar="PKG.MODULE:FN", help="instead of --data: a function (imports and runs your "
              "code: needs --trust-code) returning (train, val) Datasets / DataLoaders, or a dict of train, val and optionally loss_fn, "
              "evaluate, metric, unit")
@click.option("--image-size", metavar="WxH", help="resize the images of an image folder to this (default: the most "
              "common size)")
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
@click.option("--ecvq", metavar="[PATTERN=]S,...",
              help="entropy-constrained weight sharing strength per layer (as dcconvert --ecvq; 0: plain k-means; "
                   "default 0.5)")
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
@click.option("--prox-l1", type=click.FloatRange(0), default=0.0, show_default=True, metavar="LAMBDA",
              help="proximal L1 training: after every optimizer step of training and retraining, shrink each weight "
              "towards zero by lr x LAMBDA (exact zeros; sparsity-inducing)")
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
@click.option("--resume", is_flag=True, help="save the run's state after every stage in OUTPUT.state and, when that "
              "file exists, go on from it (the same file as an uninterrupted run); removed when OUTPUT is written")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="DataLoader worker processes for image folders and factory Datasets")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="where to train; auto: the GPU if there is one (under torchrun: cuda:LOCAL_RANK)")
@click.option("--trust-code", is_flag=True, help="allow --model / --data-factory to import and run your own Python "
              "modules (dcz's converters.pipeline:* factories need no flag)")
@click.option("-q", "--quiet", is_flag=True, help="only the result lines")
@click.version_option(__version__, prog_name="dcz pipeline", message="%(prog)s (dcz) %(version)s")
def pipeline(model_spec, data, data_factory, image_size, output, input_shape, checkpoint, epochs, retrain_epochs,
             finetune_epochs, sparsity, bits, ecvq, prune_neurons, schedule, separate_phases, max_accuracy_drop, lr, retrain_lr,
             finetune_lr, batch_size, optimizer, l1, l2, prox_l1, init, min_size, scan_sparsities, scan_bits, report_dir,
             limit_train, limit_test, seed, threads, resume, workers, device, trust_code, quiet):
    """Deep Compression with training data: prune + retrain, share weights + fine-tune centroids, write OUTPUT.

    Evaluates on the test split; prints the per-layer table, the accuracy before and after
    and the compression ratio. Under torchrun (torchrun --nproc-per-node N -m converters.pipeline_cli ...)
    the training runs in N processes (DistributedDataParallel); rank 0 prints and writes.
    """
    from .settings import SettingError

    outdir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(outdir):
        raise ConvertError(f"cannot write {output}: directory {outdir} does not exist")
    if os.path.isdir(output):
        raise ConvertError(f"cannot write {output}: it is a directory")
    if (data is None) == (data_factory is None):
        raise click.UsageError("give --data or --data-factory (one of them)")
    factory.check_trusted(model_spec, trust_code, "--model")
    if data_factory is not None:
        factory.check_trusted(data_factory, trust_code, "--data-factory")
    if data is not None and data != "digits" and not os.path.isdir(data) and not (data.endswith(".npz")
                                                                                  and os.path.isfile(data)):
        raise click.BadParameter(f"{data!r} is neither a directory, an .npz file nor 'digits'", param_hint="--data")
    shape = _shape(input_shape) if input_shape else None
    size = _image_size(image_size) if image_size else None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConvertError("dcz pipeline needs PyTorch: pip install 'dcz[torch]' (torch==2.13.0)") from None
    from . import pipeline as P

    if threads:
        torch.set_num_threads(threads)
    device = _device(device)
    P.dist.init_from_env(device)
    try:
        s = P.Settings(sparsity=sparsity, bits=bits, ecvq=ecvq, prune_neurons=prune_neurons, schedule=_floats(schedule),
                       separate_phases=separate_phases, epochs=(0 if checkpoint else 5) if epochs is None else epochs,
                       retrain_epochs=retrain_epochs, finetune_epochs=finetune_epochs, lr=lr, retrain_lr=retrain_lr,
                       finetune_lr=finetune_lr, batch_size=batch_size, optimizer=optimizer, l1=l1, l2=l2, init=init,
                       min_size=min_size, max_accuracy_drop=max_accuracy_drop, scan_sparsities=_floats(scan_sparsities),
                       scan_bits=_floats(scan_bits), seed=seed, prox_l1=prox_l1, workers=workers)
    except (SettingError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    main = P.dist.is_main()
    echo = (lambda *a, **k: None) if quiet or not main else click.echo
    tty = P.console_progress(epochs=True, stages=False) if not quiet and main else None
    try:
        f = run_pipeline(model_spec=model_spec, data=data, input_shape=shape, output=output, checkpoint=checkpoint,
                         settings=s, report_dir=report_dir, limit_train=limit_train, limit_test=limit_test, echo=echo,
                         epoch_progress=tty, data_factory=data_factory, image_size=size, resume=resume,
                         device=None if device == "cpu" else device, trust_code=trust_code)
    except SettingError as e:
        raise click.UsageError(str(e)) from None
    except RuntimeError as e:  # what torch raises when the model and the data do not fit
        raise ConvertError(f"--model {model_spec}: {first_line(e)}") from None
    except ConvertError as e:  # raised in a DataLoader worker: re-raised with the worker's traceback as its text
        text = str(e)
        if "DataLoader worker" not in text:
            raise
        raise ConvertError(text.strip().splitlines()[-1].split("ConvertError: ", 1)[-1]) from None
    finally:
        P.dist.shutdown()
    if not main:
        return
    res = f["result"]
    if not quiet:
        print_layer_table(res.rows, res.plan)
    for note in res.notes:
        click.echo(f"note: {_escape(note)}")
    lines = accuracy_lines(res.accuracy, f["ort_accuracy"]) if f["metric"] == "accuracy" and f["unit"] == "%" else \
        [f"{f['metric']}: dense {res.accuracy['dense']:.4g}{f['unit']}, pruned {res.accuracy['pruned']:.4g}{f['unit']}, "
         f"weight-shared {res.accuracy['quantized']:.4g}{f['unit']}, after centroid fine-tuning "
         f"{res.accuracy['compressed']:.4g}{f['unit']}"]
    for line in lines + size_lines(output, res.dcz_bytes, res.params, res.onnx_bytes):
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


if __name__ == "__main__":  # torchrun --nproc-per-node N -m converters.pipeline_cli ... (or python -m)
    from dcformat.cliutil import run

    run(pipeline, prog_name="dcz pipeline")
