"""Command-line tools of the runtime side: dcinspect (and the decoders' commands)."""

from __future__ import annotations

import csv
import json
import sys

import click

from . import inspect as insp
from .cliutil import _escape, check_distinct, check_output, run, times_smaller
from .errors import DczError, first_line
from .table import render


def _fmt_int(v) -> str:
    return "-" if v is None else f"{v:,}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = ["tensor", "shape", "params", "encoding", "nonzeros", "sparsity", "bits", "gap b", "gap B", "index B",
           "codebook B", "raw B", "total B", "bits/param", "x fp32", "share"]


def _cells(r: dict) -> list[str]:
    bits = "-" if r["bits"] is None else f"{r['bits']} ({r['codebook_size']})"
    return [r["name"], "x".join(map(str, r["shape"])) or "()", _fmt_int(r["params"]), r["encoding"],
            _fmt_int(r["nonzeros"]), _fmt(r["sparsity"], ".1%"), bits, _fmt(r["gap_bits"], "d"),
            _fmt_int(r["gap_bytes"]), _fmt_int(r["index_bytes"]), _fmt_int(r["codebook_bytes"]), _fmt_int(r["raw_bytes"]),
            _fmt_int(r["bytes"]), _fmt(r["bits_per_param"], ".2f"), _fmt(r["ratio"], ".1f"), _fmt(r["share"], ".1%")]


def _print_report(rep: dict, rows: list[dict]) -> None:
    out = sys.stdout
    meta = rep["metadata"] or {}
    print(f"{_escape(rep['file'])}: {rep['kind']}, {rep['size']:,} bytes"
          + (f", format {rep['format_version']}" if rep["format_version"] else "")
          + ("" if rep["has_graph"] or rep["kind"] != "dcz" else ", weights only (no graph)"), file=out)
    for key in ("producer", "source", "source_sha256", "settings", "accuracy", "opset"):
        if key in meta:
            v = meta[key]
            print(f"  {key}: {_escape(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)}", file=out)
    t = rep["totals"]
    footer = ["total", "", _fmt_int(t["params"]), "", _fmt_int(t["nonzeros"]),
              _fmt(1 - t["nonzeros"] / t["params"] if t["params"] else None, ".1%"), "", "",
              _fmt_int(t["gap_bytes"]), _fmt_int(t["index_bytes"]), _fmt_int(t["codebook_bytes"]), _fmt_int(t["raw_bytes"]),
              _fmt_int(t["tensor_bytes"]), _fmt(8 * t["tensor_bytes"] / t["params"] if t["params"] else None, ".2f"),
              _fmt(t["fp32_bytes"] / t["tensor_bytes"] if t["tensor_bytes"] else None, ".1f"),
              _fmt(t["tensor_bytes"] / rep["size"] if rep["size"] else None, ".1%")]
    shown = "" if len(rows) == len(rep["tensors"]) else f" ({len(rows)} of {len(rep['tensors'])} shown; total is all)"
    render(f"tensors{shown}", COLUMNS, [_cells(r) for r in rows], right=set(COLUMNS) - {"tensor", "shape", "encoding"},
           footer=footer)
    o = rep["overhead"]
    parts = ", ".join(f"{k} {v:,}" for k, v in o.items() if k != "total" and v)
    print(f"overhead: {o['total']:,} bytes" + (f" ({parts})" if parts else ""), file=out)
    print(f"file: {rep['size']:,} bytes = {t['tensor_bytes']:,} tensor bytes + {o['total']:,} overhead; "
          f"{t['params']:,} parameters, {_fmt(t['bits_per_param'], '.2f')} bits/param, "
          f"{times_smaller(t['ratio'], 'fp32')}", file=out)


def _print_compare(reps: list[dict]) -> None:
    names = list(dict.fromkeys(r["name"] for rep in reps for r in rep["tensors"]))  # first-seen order, linear
    by_name = [{} for _ in reps]
    for rows, rep in zip(by_name, reps):
        for r in rep["tensors"]:
            rows.setdefault(r["name"], r)
    cols = ["tensor"]
    for i in range(len(reps)):
        cols += [f"[{i + 1}] bytes", f"[{i + 1}] sparsity", f"[{i + 1}] bits"]
    if len(reps) == 2:
        cols.append("[2]/[1]")
    body = []
    for n in names:
        cells = [n]
        got = [rows.get(n) for rows in by_name]
        for r in got:
            cells += ["-", "-", "-"] if r is None else [
                _fmt_int(r["bytes"]), _fmt(r["sparsity"], ".1%"), "-" if r["bits"] is None else str(r["bits"])]
        if len(reps) == 2:
            cells.append(_fmt(got[1]["bytes"] / got[0]["bytes"], ".3f") if all(got) and got[0]["bytes"] else "-")
        body.append(cells)
    footer = ["file size"]
    for rep in reps:
        footer += [_fmt_int(rep["size"]), "", ""]
    if len(reps) == 2:
        footer.append(_fmt(reps[1]["size"] / reps[0]["size"], ".3f") if reps[0]["size"] else "-")
    for i, rep in enumerate(reps):
        print(f"[{i + 1}] {_escape(rep['file'])} ({rep['kind']}, {rep['size']:,} bytes)")
    render(None, cols, body, right=set(cols) - {"tensor"}, footer=footer)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="print the per-tensor rows as CSV")
@click.option("--sort", type=click.Choice(["size", "name", "ratio"]), help="order of the rows (default: file order)")
@click.option("--top", type=click.IntRange(1), help="show only the first N rows (after --sort)")
@click.option("--filter", "pattern", metavar="PATTERN", help="only tensors whose name matches this glob, e.g. 'fc*'")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), metavar="OUT",
              help="save a picture: bytes per layer by stream and weight histograms (.png, .svg or .html)")
@click.option("--verify", is_flag=True, help="check every checksum and decode every tensor; exit 1 if anything is damaged")
def dcinspect(files, as_json, as_csv, sort, top, pattern, plot_out, verify):
    """Show where the bytes of a .dcz file go, per tensor.

    Also reads .onnx, .safetensors and PyTorch state_dict files (their dense sizes). Give two or
    more files to compare them side by side.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    if verify:
        ok_all = True
        for f in files:
            items, ok = insp.verify_report(f)
            ok_all &= ok
            for what, err in items:
                click.echo(f"{_escape(f)}: {_escape(what)}: {'ok' if err is None else 'DAMAGED: ' + _escape(err)}")
            click.echo(f"{_escape(f)}: {'all checksums match and every tensor decodes' if ok else 'damaged'}")
        if not ok_all:
            sys.exit(1)
        return
    reps = [insp.inspect_any(f) for f in files]
    if pattern and not any(insp.select(rep["tensors"], None, None, pattern) for rep in reps):
        raise click.UsageError(f"--filter {pattern!r} matches no tensor")
    if plot_out:
        from . import plot
        from .reader import open as open_dcz

        if len(reps) != 1:
            raise click.UsageError("--plot takes one file")
        reader = open_dcz(files[0]) if reps[0]["kind"] == "dcz" else None
        try:
            plot.save(reps[0], plot_out, reader)
        finally:
            if reader is not None:
                reader.close()
    if as_json:
        for rep in reps:
            rep["tensors"] = insp.select(rep["tensors"], sort, top, pattern)
        click.echo(json.dumps(reps[0] if len(reps) == 1 else reps, indent=1, default=str))
        return
    if as_csv:
        w = csv.writer(sys.stdout)
        keys = ["file", "name", "shape", "dtype", "params", "encoding", "nonzeros", "sparsity", "codebook_size", "bits",
                "gap_bits", "entries", "gap_bytes", "index_bytes", "codebook_bytes", "raw_bytes", "bytes",
                "bits_per_param", "ratio", "share"]
        w.writerow(keys)
        for rep in reps:
            for r in insp.select(rep["tensors"], sort, top, pattern):
                w.writerow([rep["file"] if k == "file" else "x".join(map(str, r["shape"])) if k == "shape" else r[k] for k in keys])
        return
    if len(reps) > 1:
        for rep in reps:
            rep["tensors"] = insp.select(rep["tensors"], None, None, pattern)
        _print_compare(reps)
        return
    rep = reps[0]
    _print_report(rep, insp.select(rep["tensors"], sort, top, pattern))
    if plot_out:
        click.echo(f"plot saved to {_escape(plot_out)}")


def inspect_main(argv=None):
    run(dcinspect, argv, prog_name="dcinspect")


# ---------------------------------------------------------------- dcdecode
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write the ONNX model here")
@click.option("--external-data", is_flag=True,
              help="put the weights in OUTPUT.data beside the .onnx (automatic for models over 2 GB)")
@click.option("--compact", is_flag=True, help="keep codebook weights as uint8 indices + codebook (Gather/DequantizeLinear)")
@click.option("--state-dict", type=click.Path(dir_okay=False), metavar="OUT.safetensors",
              help="write every tensor to a .safetensors file (works for weights-only files)")
def dcdecode(model, output, external_data, compact, state_dict):
    """Decode a .dcz into an ONNX model (or a safetensors state_dict)."""
    from . import runtime

    if not output and not state_dict:
        raise click.UsageError("give -o OUT.onnx and/or --state-dict OUT.safetensors")
    outs = {}
    if output:  # and its weights file, written with --external-data or for models over 2 GB
        outs.update({"-o": output, "its weights file": output + ".data"})
    if state_dict:
        outs["--state-dict"] = state_dict
    check_distinct(outs, {"the input": model})
    for path in (output, state_dict):
        if path:
            check_output(path)
    if output:
        from .reader import open as open_dcz

        with open_dcz(model) as r:
            if r.graph_bytes is None:
                raise click.ClickException(f"{model}: weights-only file (no graph section), there is no model to "
                                           f"write; use --state-dict OUT.safetensors for its tensors")
    # the model first: rebuilding it is what can fail (its graph, protobuf's 2 GB limit) before anything is written
    if output:
        n, data = runtime.save_onnx(model, output, compact=compact, external_data=True if external_data else None)
        click.echo(f"wrote {_escape(output)} ({n:,} bytes)" + (f" with weights in {_escape(data)}" if data else ""))
    if state_dict:
        n = runtime.save_state_dict(model, state_dict)
        click.echo(f"wrote {_escape(state_dict)} ({n:,} bytes)")


def decode_main(argv=None):
    run(dcdecode, argv, prog_name="dcdecode")


# ---------------------------------------------------------------- dcrun
def _load_inputs(specs) -> dict:
    import numpy as np

    paths = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise click.UsageError(f"--input takes NAME=file.npy, got {spec!r}")
        if name in paths:
            raise click.UsageError(f"--input {name} is given twice")
        paths[name] = path
    feeds = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as f:
                head = f.read(6)
            if not head.startswith((b"\x93NUMPY", b"PK\x03\x04")):  # .npy, or .npz (refused below)
                raise ValueError("not a .npy file: those start with \\x93NUMPY")
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise click.UsageError(f"--input {name}: cannot read {path!r} as .npy ({e})") from None
        if not isinstance(arr, np.ndarray):  # an .npz archive
            arr.close()
            raise click.UsageError(f"--input {name}: {path!r} is an .npz archive; give one array saved with numpy.save")
        feeds[name] = arr
    return feeds


def _ort(what: str, fn, *args):
    """Call ONNX Runtime; its own exceptions become a one-line error."""
    try:
        return fn(*args)
    except (click.ClickException, DczError):
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises its own classes (Fail, InvalidArgument, ...)
        raise click.ClickException(f"{what}: {first_line(e)}") from None


def _pct(times, q):
    import numpy as np

    return float(np.percentile(np.asarray(times) * 1e3, q))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="an input array (repeatable); "
              "inputs not given are made at random from the declared shapes")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="size of dynamic dimensions of random inputs")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--compact", is_flag=True, help="keep codebook weights as uint8 indices in memory")
@click.option("--output-dir", type=click.Path(file_okay=False), help="save each output as NAME.npy here")
@click.option("--bench", type=click.IntRange(1), metavar="N", help="time load, first run and N runs (p50/p99)")
@click.option("--compare", type=click.Path(dir_okay=False, exists=True), metavar="MODEL.onnx",
              help="run this ONNX model on the same inputs and report the differences")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="seed of the random inputs")
def dcrun(model, inputs, batch, provider, compact, output_dir, bench, compare, seed):
    """Run a .dcz model in ONNX Runtime."""
    import os
    import time

    import numpy as np

    from . import inputs as inp
    from . import runtime

    feeds = _load_inputs(inputs)
    t0 = time.perf_counter()
    sess = runtime.InferenceSession(model, providers=[provider], compact=compact)
    t_load = time.perf_counter() - t0
    given = set(feeds)
    if len(given) < len(sess.get_inputs()):
        rand = inp.random_inputs(sess, batch, seed)
        for k, v in rand.items():
            feeds.setdefault(k, v)
    inp.check_inputs(sess, feeds)
    for i in sess.get_inputs():
        src = "given" if i.name in given else "random"
        click.echo(f"input  {_escape(i.name)}: {feeds[i.name].dtype} {list(feeds[i.name].shape)} ({src})")
    t0 = time.perf_counter()
    outs = _ort("ONNX Runtime cannot run the model", sess.run, None, feeds)
    t_first = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    for name, y in zip(names, outs):
        y = np.asarray(y)
        desc = f"output {_escape(name)}: {y.dtype} {list(y.shape)}"
        if y.size and y.dtype.kind == "f":
            with np.errstate(all="ignore"):  # the mean of large values overflows: inf, without a RuntimeWarning
                desc += f" min {float(y.min()):.4g} max {float(y.max()):.4g} mean {float(y.mean()):.4g}"
        if y.ndim == 2 and y.shape[1] > 1:
            desc += f"; top-1 of first rows: {y.argmax(1)[:8].tolist()}"
        click.echo(desc)
    if output_dir:
        from .atomic import atomic_output

        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"--output-dir: cannot create {output_dir}: {e.strerror or e}") from None
        used = set()
        for name, y in zip(names, outs):
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "output"
            while safe in used:  # two names that map to one file name
                safe += "_"
            used.add(safe)
            path = os.path.join(output_dir, safe + ".npy")
            try:
                with atomic_output(path, suffix=".npy.tmp") as f:  # complete or absent, even on a full disk
                    np.save(f, np.asarray(y), allow_pickle=False)
            except OSError as e:
                raise click.ClickException(f"cannot write output {name!r} to {path}: {e.strerror or e}") from None
        click.echo(f"outputs saved in {_escape(output_dir)}")
    if compare:
        import onnxruntime as ort

        try:
            ref = ort.InferenceSession(compare, providers=runtime.resolve_providers([provider]))
        except runtime.ProviderError:
            raise
        except Exception as e:  # noqa: BLE001
            raise click.ClickException(f"cannot load {compare}: {first_line(e)}") from None
        ref_names = [o.name for o in ref.get_outputs()]
        if {i.name for i in ref.get_inputs()} != set(feeds):
            raise click.ClickException(f"cannot compare: {compare} takes inputs "
                                       f"{inp.describe(ref.get_inputs())}, the .dcz model takes {', '.join(feeds)}")
        ref_outs = _ort(f"cannot run {compare}", ref.run, None, feeds)
        if ref_names != names:  # compare by name where they match, else by position
            by_name = dict(zip(ref_names, ref_outs))
            ref_outs = [by_name[n] for n in names] if set(names) <= set(by_name) else ref_outs
        if len(ref_outs) != len(outs):
            click.echo(f"compare: {_escape(compare)} has {len(ref_outs)} outputs, the .dcz model {len(outs)}; "
                       f"comparing the first {min(len(ref_outs), len(outs))}")
        for name, y, r in zip(names, outs, ref_outs):
            y, r = np.asarray(y), np.asarray(r)
            if y.shape != r.shape:
                click.echo(f"compare {_escape(name)}: shapes differ {list(y.shape)} vs {list(r.shape)}")
                continue
            line = f"compare {_escape(name)}: max abs diff {float(np.max(np.abs(y.astype(np.float64) - r))) if y.size else 0.0:.3g}"
            if y.ndim == 2 and y.shape[1] > 1:
                line += f", top-1 agreement {float(np.mean(y.argmax(1) == r.argmax(1))):.1%} of {y.shape[0]}"
            click.echo(line)
    if bench:
        times = []
        for _ in range(bench):
            t0 = time.perf_counter()
            _ort("ONNX Runtime cannot run the model", sess.run, None, feeds)
            times.append(time.perf_counter() - t0)
        click.echo(f"bench ({provider}{', compact' if compact else ''}): load {t_load * 1e3:.1f} ms, first run "
                   f"{t_first * 1e3:.2f} ms, {bench} runs p50 {_pct(times, 50):.3f} ms p99 {_pct(times, 99):.3f} ms")


def run_main(argv=None):
    run(dcrun, argv, prog_name="dcrun")
