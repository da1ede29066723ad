"""Command-line tools of the runtime side: dcinspect (and the decoders' commands)."""

from __future__ import annotations

import csv
import json
import sys

import click

from . import __version__
from .cliutil import _escape, check_distinct, check_input, check_output, naming, run, times_smaller
from .errors import DczError, first_line
from .table import render


def _fmt_int(v) -> str:
    return "-" if v is None else f"{v:,}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = ["tensor", "shape", "params", "encoding", "nonzeros", "sparsity", "bits", "centroids", "gap bits", "gap B",
           "index B", "codebook B", "coded B", "raw B", "total B", "bits/param", "x fp32", "share"]
STREAM_COLUMNS = {"gap B": "gap", "index B": "index", "codebook B": "codebook", "coded B": "coded", "raw B": "raw"}
# left out first when the terminal is narrow (the name and the essential numbers stay)
DROP = ["nonzeros", "share", "codebook B", "coded B", "raw B", "gap B", "index B", "gap bits", "bits/param", "centroids",
        "encoding", "x fp32", "shape"]
LEGEND = ("bits: weight-sharing bits (a codebook of up to 2^bits centroids); B: bytes\n"
          "coded B: values coded losslessly (float-planes' Huffman-coded byte planes, lzma)\n"
          "centroids: codebook entries; gap bits: width of a sparse gap code;\n"
          "x fp32: times smaller than float32")
SMALL = 64  # tensors with fewer elements share one summary row unless --all
MAX_META_LINES = 60


def _centroids(r: dict) -> str:
    """Codebook entries; with per-channel scales (1.2) 'KxC@a': K centroids, times C scales along axis a."""
    if r["bits"] is None:
        return "-"
    if r.get("scale_axis") is not None:
        return f"{r['codebook_size']}x{r['scale_count']}@{r['scale_axis']}"
    return _fmt(r["codebook_size"], "d")


SCALES_LEGEND = "KxC@a: K centroids scaled per channel, C scales along axis a (in codebook B)"


def _scales_note(rows: list[dict]) -> str | None:
    """One line on the per-channel scales of these rows (count, dtypes, bytes), or None if none has them."""
    scaled = [r for r in rows if r.get("scale_axis") is not None]
    if not scaled:
        return None
    by_dtype = {}
    for r in scaled:
        by_dtype[r["scale_dtype"]] = by_dtype.get(r["scale_dtype"], 0) + r["scale_count"]
    kinds = " + ".join(f"{_fmt_int(n)} {dt}" for dt, n in sorted(by_dtype.items(), key=lambda kv: kv[0] != "float32"))
    return (f"per-channel scales: {len(scaled)} tensor{'s' * (len(scaled) != 1)} ({kinds} values, "
            f"{_fmt_int(sum(r['scale_bytes'] for r in scaled))} bytes)")


def _cells(r: dict) -> list[str]:
    return [r["name"], "x".join(map(str, r["shape"])) or "()", _fmt_int(r["params"]), r["encoding"],
            _fmt_int(r["nonzeros"]), _fmt(r["sparsity"], ".1%"), _fmt(r["bits"], "d"),
            _centroids(r), _fmt(r["gap_bits"], "d"),
            *(_fmt_int(r[f"{k}_bytes"]) for k in STREAM_COLUMNS.values()),
            _fmt_int(r["bytes"]), _fmt(r["bits_per_param"], ".2f"), _fmt(r["ratio"], ".1f"), _fmt(r["share"], ".1%")]


def _sum_cells(label: str, rows: list[dict], size: int) -> list[str]:
    """A row (or the footer) that adds up ``rows``: counts and bytes; no per-tensor codebook facts."""
    params = sum(r["params"] for r in rows)
    nz = [r["nonzeros"] for r in rows]
    nonzeros = None if None in nz else sum(nz)
    nbytes = sum(r["bytes"] for r in rows)
    return [label, "", _fmt_int(params), "", _fmt_int(nonzeros),
            _fmt(1 - nonzeros / params if params and nonzeros is not None else None, ".1%"), "", "", "",
            *(_fmt_int(sum(r[f"{k}_bytes"] for r in rows)) for k in STREAM_COLUMNS.values()),
            _fmt_int(nbytes), _fmt(8 * nbytes / params if params else None, ".2f"),
            _fmt(4 * params / nbytes if nbytes else None, ".1f"), _fmt(nbytes / size if size else None, ".1%")]


def _kv_lines(value, indent: str = "  ") -> list[str]:
    """Metadata as key/value lines: a dict indents its keys, a list of plain values is joined."""
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict) and v and len(v) <= 4 and not any(isinstance(x, (dict, list)) for x in v.values()):
                lines.append(f"{indent}{_escape(k)}: " + ", ".join(f"{_escape(a)} {_scalar(b)}" for a, b in v.items()))
            elif isinstance(v, dict) and v:
                lines.append(f"{indent}{_escape(k)}:")
                lines += _kv_lines(v, indent + "  ")
            else:
                lines.append(f"{indent}{_escape(k)}: {_scalar(v)}")
        return lines
    return [f"{indent}{_scalar(value)}"]


def _scalar(v) -> str:
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return _escape(", ".join(_scalar(x) for x in v)) if v else "[]"
    if isinstance(v, (dict, list)):
        return _escape(json.dumps(v, sort_keys=True))
    if v is None:
        return "-"
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return _escape(v)


META_ORDER = ("producer", "source", "source_sha256", "settings", "fidelity", "accuracy", "opset")


def _fidelity_lines(fid) -> list[str]:
    """The fidelity dcconvert stored, as dcconvert printed it: the verdict, then one line per output
    (--json has every field); [] when it is not the schema dcformat.fidelity writes."""
    from . import fidelity

    try:
        if not (isinstance(fid, dict) and fid.get("measured") and isinstance(fid.get("outputs"), dict)):
            return []
        fid = fidelity.expand(fid)  # schema 2 leaves out the fields that hold their defaults
        cal = fid.get("calibration") or {}
        on = (f" on {cal['samples']} {'synthetic' if cal.get('synthetic') else 'given'} calibration samples"
              if isinstance(cal.get("samples"), int) else "")
        head = (f"  fidelity (measured by dcconvert{on}): relative L2 error {fid['max_rel_l2']:.3g} "
                f"(worst output: {_escape(str(fid['worst_output']))})")
        if isinstance(fid.get("budget"), (int, float)):
            head += f", {'within' if fid.get('within_budget') else 'OVER'} the budget --max-error {fid['budget']:g}"
        return [head] + [_escape(x) for x in fidelity.lines(fid, "    ")]
    except (KeyError, TypeError, ValueError):  # metadata from another writer: shown as plain key/value lines
        return []


def _print_metadata(meta: dict, out) -> None:
    if not isinstance(meta, dict) or not meta:
        return
    keys = [k for k in META_ORDER if k in meta] + [k for k in meta if k not in META_ORDER]
    lines = []
    for k in keys:
        v = meta[k]
        label = "fidelity (measured by dcconvert)" if k == "fidelity" else k
        if k == "fidelity" and _fidelity_lines(v):
            lines += _fidelity_lines(v)
            continue
        if k == "settings" and isinstance(v, dict):  # the options left unset say nothing
            v = {a: b for a, b in v.items() if b is not None}
        if isinstance(v, dict) and v:
            lines.append(f"  {_escape(label)}:")
            lines += _kv_lines(v, "    ")
        else:
            lines.append(f"  {_escape(label)}: {_scalar(v)}")
    for line in lines[:MAX_META_LINES]:
        print(line, file=out)
    if len(lines) > MAX_META_LINES:
        print(f"  ... {len(lines) - MAX_META_LINES} more metadata lines (--json shows all)", file=out)


def _report_table(rep: dict, rows: list[dict], group_small: bool = True):
    """(columns, body rows, footer, the small tensors summed in one row) of dcinspect's table of ``rows``."""
    footer = _sum_cells("total", rep["tensors"], rep["size"])
    small = [r for r in rows if r["params"] < SMALL] if group_small else []
    if len(small) < 2:
        small = []
    ids = {id(r) for r in small}
    body = [_cells(r) for r in rows if id(r) not in ids]
    if small:
        body.append(_sum_cells(f"+ {len(small)} small tensors", small, rep["size"]))
    # a byte stream no tensor of the file has is no column (a codebook model has no coded bytes)
    keep = [i for i, c in enumerate(COLUMNS)
            if c not in STREAM_COLUMNS or any(r[f"{STREAM_COLUMNS[c]}_bytes"] for r in rep["tensors"])]
    return [COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in body], [footer[i] for i in keep], small


def _print_report(rep: dict, rows: list[dict], group_small: bool = True) -> None:
    out = sys.stdout
    meta = rep["metadata"] or {}
    print(f"{_escape(rep['file'])}: {rep['kind']}, {rep['size']:,} bytes"
          + (f", format {rep['format_version']}" if rep["format_version"] else "")
          + ("" if rep["has_graph"] or rep["kind"] != "dcz" else ", weights only (no graph)"), file=out)
    _print_metadata(meta, out)
    t = rep["totals"]
    cols, body, footer, small = _report_table(rep, rows, group_small)
    shown = "" if len(rows) == len(rep["tensors"]) else f" ({len(rows)} of {len(rep['tensors'])} shown; total is all)"
    render(f"tensors{shown}", cols, body, right=set(cols) - {"tensor", "shape", "encoding"},
           footer=footer, drop=DROP, more="a wider terminal, --csv or --json shows them")
    if small:
        print(f"+ {len(small)} small tensors: those of fewer than {SMALL} elements, summed in one row; --all lists them",
              file=out)
    if rep["kind"] == "dcz":
        print(LEGEND if "coded B" in cols else LEGEND.replace(LEGEND.splitlines()[1] + "\n", ""), file=out)
        note = _scales_note(rep["tensors"])
        if note:
            print(SCALES_LEGEND, file=out)
            print(note, file=out)
    o = rep["overhead"]
    parts = ", ".join(f"{k} {v:,}" for k, v in o.items() if k != "total" and v)
    print(f"overhead: {o['total']:,} bytes" + (f" ({parts})" if parts else ""), file=out)
    print(f"file: {rep['size']:,} bytes = {t['tensor_bytes']:,} tensor bytes + {o['total']:,} overhead; "
          f"{t['params']:,} parameters, {_fmt(t['bits_per_param'], '.2f')} bits/param, "
          f"{times_smaller(t['ratio'], 'fp32')}", file=out)


def _print_compare(reps: list[dict], sort: str | None = None, top: int | None = None) -> None:
    names = list(dict.fromkeys(r["name"] for rep in reps for r in rep["tensors"]))  # first-seen order, linear
    by_name = [{} for _ in reps]
    for rows, rep in zip(by_name, reps):
        for r in rep["tensors"]:
            rows.setdefault(r["name"], r)
    if sort:  # by the first file that has the tensor: its bytes (largest first), name, or x fp32 (largest first)
        def key(n):
            r = next(rows[n] for rows in by_name if n in rows)
            return {"size": (-r["bytes"], n), "name": (n,), "ratio": (-(r["ratio"] or 0), n)}[sort]

        names.sort(key=key)
    total = len(names)
    names = names[:top] if top else names
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
    if len(names) < total:
        print(f"{len(names)} of {total} tensors shown (--top {top}); the file sizes are of all")
    drop = [c for i in range(len(reps), 0, -1) for c in (f"[{i}] bits", f"[{i}] sparsity")]
    render(None, cols, body, right=set(cols) - {"tensor"}, footer=footer, drop=drop)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="print the per-tensor rows as CSV")
@click.option("--sort", type=click.Choice(["size", "name", "ratio"]), help="order of the rows (default: file order)")
@click.option("--top", type=click.IntRange(1), help="show only the first N rows (after --sort)")
@click.option("--filter", "pattern", metavar="PATTERN", help="only tensors whose name matches this glob, e.g. 'fc*'")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), metavar="OUT",
              help="save a picture: bytes per layer by stream and weight histograms (.png, .svg or .html)")
@click.option("--verify", is_flag=True, help="check every checksum and decode every tensor; exit 1 if anything is damaged")
@click.option("--all", "show_all", is_flag=True, help=f"list every tensor (by default those of fewer than {SMALL} "
              "elements share one row)")
@click.version_option(__version__, prog_name="dcinspect", message="%(prog)s (dcz) %(version)s")
def dcinspect(files, as_json, as_csv, sort, top, pattern, plot_out, verify, show_all):
    """Show where the bytes of a .dcz file go, per tensor.

    Also reads .onnx, .safetensors and PyTorch state_dict files (their dense sizes). Give two or
    more files to compare them side by side.
    """
    from . import inspect as insp  # numpy and the reader: not needed for --help

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    if verify:
        ok_all = True
        for f in files:
            items, ok, verdict = insp.verify_any(f)
            ok_all &= ok
            for what, err in items:
                click.echo(f"{_escape(f)}: {_escape(what)}: {'ok' if err is None else 'DAMAGED: ' + _escape(err)}")
            click.echo(f"{_escape(f)}: {verdict}")
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
        prog = _plot_progress()
        try:
            plot.save(reps[0], plot_out, reader, progress=prog)
        finally:
            if prog is not None:
                prog.stop()
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
                "gap_bits", "entries", "gap_bytes", "index_bytes", "codebook_bytes", "coded_bytes", "raw_bytes", "bytes",
                "bits_per_param", "ratio", "share", "scale_axis", "scale_count", "scale_dtype", "scale_bytes"]
        w.writerow(keys)
        for rep in reps:
            for r in insp.select(rep["tensors"], sort, top, pattern):
                w.writerow([_escape(rep["file"]) if k == "file" else "x".join(map(str, r["shape"])) if k == "shape"
                            else _escape(r[k]) if k == "name" else r[k] for k in keys])
        return
    if len(reps) > 1:
        for rep in reps:
            rep["tensors"] = insp.select(rep["tensors"], None, None, pattern)
        _print_compare(reps, sort, top)
        return
    rep = reps[0]
    _print_report(rep, insp.select(rep["tensors"], sort, top, pattern), group_small=not (show_all or pattern))
    if plot_out:
        click.echo(f"plot saved to {_escape(plot_out)}")


def _plot_progress():
    """On a terminal, a progress line on stderr while --plot decodes and draws (it takes seconds)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(SpinnerColumn(), TextColumn("plot"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[what]}", markup=False), transient=True, console=Console(file=sys.stderr))
    task = bar.add_task("plot", total=None, what="loading matplotlib")
    bar.start()

    def update(done, total, what):
        what = _escape(what)[-60:]
        bar.update(task, completed=done, total=total or None,
                   what=what if not what or what.startswith("writing") else f"decoding and drawing {what}")

    update.stop = bar.stop
    return update


def inspect_main(argv=None):
    run(dcinspect, argv, prog_name="dcinspect")


# ---------------------------------------------------------------- dcdecode
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write the ONNX model here")
@click.option("--external-data", is_flag=True,
              help="put the weights in OUTPUT.data beside the .onnx (automatic for models over 2 GB)")
@click.option("--compact", is_flag=True, help="keep codebook weights as uint8 indices + codebook (Gather/DequantizeLinear)")
@click.option("--state-dict", type=click.Path(dir_okay=False), metavar="OUT.safetensors",
              help="write every tensor to a .safetensors file (works for weights-only files)")
@click.version_option(__version__, prog_name="dcdecode", message="%(prog)s (dcz) %(version)s")
def dcdecode(model, output, external_data, compact, state_dict):
    """Decode a .dcz into an ONNX model (or a safetensors state_dict)."""
    _import_numpy_without_hugepages()  # it decodes every weight once, as dcrun does
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
        with naming(model):
            n, data = runtime.save_onnx(model, output, compact=compact, external_data=True if external_data else None)
        click.echo(f"wrote {_escape(output)} ({n:,} bytes)" + (f" with weights in {_escape(data)}" if data else ""))
    if state_dict:
        with naming(model):
            n = runtime.save_state_dict(model, state_dict)
        click.echo(f"wrote {_escape(state_dict)} ({n:,} bytes)")


def decode_main(argv=None):
    run(dcdecode, argv, prog_name="dcdecode")


# ---------------------------------------------------------------- dcrun
def _load_inputs(texts) -> tuple[dict, list]:
    """(arrays read from the files --input names, by input name; None for an unnamed .npy) and the
    shape/value specs, resolved once the model's inputs are known (:func:`_resolve_inputs`)."""
    import numpy as np

    from . import inputs as inp

    try:
        specs = inp.parse_inputs(texts)
    except DczError as e:
        raise click.UsageError(str(e)) from None
    feeds, later = {}, [s for s in specs if s.kind != "file"]
    for spec in specs:
        if spec.kind != "file":
            continue
        name, path = spec.name, spec.path
        what = f"--input {name}" if name else f"--input {path}"
        try:
            with open(path, "rb") as f:
                head = f.read(6)
            if not head.startswith((b"\x93NUMPY", b"PK\x03\x04")):  # .npy, or .npz
                raise ValueError("not a .npy file: those start with \\x93NUMPY" if name else
                                 "not an .npy or .npz file")
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise click.UsageError(f"{what}: cannot read {path!r} as .npy ({e})") from None
        except Exception as e:  # noqa: BLE001 - zipfile's errors on a damaged .npz
            raise click.UsageError(f"{what}: cannot read {path!r} ({first_line(e)})") from None
        if not isinstance(arr, np.ndarray):  # an .npz archive
            with arr:
                if name:
                    raise click.UsageError(f"{what}: {path!r} is an .npz archive; give one array saved with "
                                           "numpy.save, or the .npz alone (--input FILE.npz)")
                try:
                    got = {k: arr[k] for k in arr.files}
                except (ValueError, OSError, EOFError) as e:
                    raise click.UsageError(f"{what}: cannot read {path!r} ({first_line(e)})") from None
        else:
            got = {name: arr}
        for k, v in got.items():
            if k in feeds or any(s.name == k for s in later):
                raise click.UsageError(f"--input {k} is given twice")
            feeds[k] = v
    return feeds, later


def _resolve_inputs(feeds: dict, later: list, decl, batch: int, seed: int) -> dict:
    """The arrays of --input NAME:SHAPE[:DTYPE] (synthetic values of that shape) and NAME=VALUE (the
    declared shape filled with VALUE), and an unnamed .npy's input name."""
    from . import inputs as inp

    by = {d.name: d for d in decl}
    if None in feeds:
        if len(decl) != 1:
            raise click.UsageError(f"--input: one unnamed .npy but the model takes {len(decl)} inputs "
                                   f"({', '.join(by)}); give NAME=file.npy or an .npz")
        feeds[decl[0].name] = feeds.pop(None)
    for k, spec in enumerate(later):
        d = by.get(spec.name)
        if d is None:
            raise inp.InputError(f"unknown input {spec.name!r}: the model expects "
                                 f"{'; '.join(f'{x.name}: {x.type_name} {x.shape}' for x in decl)}")
        if spec.kind == "value":
            d = inp.Declared(d.name, d.dtype, [batch if i == 0 and not isinstance(v, int) else v if isinstance(v, int)
                                               else 1 for i, v in enumerate(d.shape)], d.table_rows, d.type_name)
        feeds[spec.name] = inp.example_array(spec, d, seed + k)
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


def _model_graph(path):
    """(onnx.ModelProto graph for the input builder, False) of a plain .onnx file; (None, True) for a .dcz,
    whose graph :func:`_dcz_session` parses once, for the session and the input builder together."""
    from .constants import MAGIC

    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        return None, True
    import onnx

    try:
        return onnx.load(path, load_external_data=False), False
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many kinds
        raise click.ClickException(f"{path}: neither a .dcz file nor a readable ONNX model ({first_line(e)})") from None


def _import_numpy_without_hugepages() -> None:
    """Import numpy without its transparent-huge-page hint, in a process that has not imported it yet
    (dcrun, dcdecode).

    numpy marks every large array MADV_HUGEPAGE; where the kernel's THP defrag setting is "madvise"
    (its default), the first touch of such memory may wait for memory compaction. A command that
    decodes a model's weights once (and hands them to ONNX Runtime, which allocates its own memory
    without the hint) pays that on every page: on the 2-core development machine, writing 139 MB of
    fresh numpy memory took 0.34-0.41 s with the hint and 0.09-0.11 s without, and a fresh `dcrun` of
    the 40.8M-parameter benchmark MLP (tools/bench_startup.py --params 40) 2.1-3.6 s with it, 1.8-2.0 s
    without. NUMPY_MADVISE_HUGEPAGE, if the user set it, is kept; a process that already imported
    numpy (a caller of run_main) keeps its setting."""
    import os

    if "numpy" in sys.modules or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"  # read once, when numpy is imported
    try:
        import numpy  # noqa: F401
    finally:
        del os.environ["NUMPY_MADVISE_HUGEPAGE"]  # not passed on to child processes


def _dcz_session(path, provider, compact):
    """(ONNX Runtime session, declared inputs, seconds spent on the declared inputs) of a .dcz: the graph is
    parsed and checked once (runtime.prepare), the declared inputs read from it before it is changed."""
    import time

    from . import inputs as inp
    from . import runtime
    from .reader import open as open_dcz

    with open_dcz(path) as r:
        if r._graph_section is None:
            raise click.ClickException(f"{path}: a weights-only file (no graph), there is no model to run; "
                                       f"`dcdecode {path} --state-dict OUT.safetensors` writes its tensors, "
                                       f"`dcinspect {path}` lists them")
        seen = []

        def declared(model):
            t = time.perf_counter()
            seen.append(inp.declared_inputs(model))
            seen.append(time.perf_counter() - t)

        sess = runtime._session(r, providers=[provider], compact=compact, on_graph=declared)
    return sess, seen[0], seen[1]


def _plain_session(path, provider):
    import onnxruntime as ort

    from . import runtime

    so = ort.SessionOptions()
    so.log_severity_level = 4  # fatal only: errors become one line (the size probe expects some)
    try:
        return ort.InferenceSession(path, sess_options=so, providers=runtime.resolve_providers([provider]))
    except runtime.ProviderError:
        raise
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"cannot load {path}: {first_line(e)}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("--input", "inputs", multiple=True, metavar="SPEC", help="an input (repeatable): NAME=FILE.npy, "
              "FILE.npz (arrays by input name), NAME=VALUE (the declared shape filled with VALUE, e.g. sr=16000) or "
              "NAME:SHAPE[:DTYPE] (synthetic values of that shape, e.g. input_ids:1x128); inputs not given are "
              "synthetic, built from the declared inputs (token ids below the embedding table's rows, masks all "
              "ones, smooth images in [-1, 1])")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="samples along the batch axis of synthetic inputs")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="size of a symbolic input dimension of synthetic inputs, e.g. --dim sequence=128 (repeatable)")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--compact", is_flag=True, help="keep codebook weights as uint8 indices in memory: less memory, but "
              "every run is slower (many times, the weights are rebuilt from the indices each run)")
@click.option("--output-dir", type=click.Path(file_okay=False), help="save each output as NAME.npy here")
@click.option("--bench", type=click.IntRange(1), metavar="N", help="time load, first run and N runs (p50/p99)")
@click.option("--compare", type=click.Path(dir_okay=False, exists=True), metavar="MODEL.onnx",
              help="run this ONNX model on the calibration inputs too and report the differences per output: relative "
              "L2 error ||y - y'|| / ||y|| over all samples, cosine (mean, worst sample), max abs diff, top-1 agreement")
@click.option("--calibration", type=click.Path(), metavar="PATH",
              help="inputs for --compare: .npz keyed by input name (first axis = samples), .npy, or a directory of them")
@click.option("--calibration-samples", type=click.IntRange(1), metavar="N",
              help="samples for --compare (default: 16 synthetic ones, or all of --calibration)")
@click.option("--max-error", type=float, metavar="E", help="with --compare: exit 1 if an output's relative L2 error exceeds E")
@click.option("--min-cosine", type=float, metavar="C",
              help="with --compare: exit 1 if an output's worst-sample cosine similarity is below C")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="seed of the synthetic inputs")
@click.version_option(__version__, prog_name="dcrun", message="%(prog)s (dcz) %(version)s")
def dcrun(model, inputs, batch, dims, provider, compact, output_dir, bench, compare, calibration, calibration_samples,
          max_error, min_cosine, seed):
    """Run a .dcz model (or a plain .onnx model, as a baseline) in ONNX Runtime.

    With --compare REF.onnx it is a gate for CI: exit status 1 when --max-error or --min-cosine is
    exceeded or when output shapes differ.
    """
    import os
    import time

    _import_numpy_without_hugepages()
    import numpy as np

    from . import inputs as inp

    if (max_error is not None or min_cosine is not None or calibration or calibration_samples) and not compare:
        raise click.UsageError("--max-error, --min-cosine, --calibration and --calibration-samples go with --compare")
    if max_error is not None and not max_error > 0:
        raise click.BadParameter(f"{max_error:g} is not a number > 0", param_hint="--max-error")
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise click.BadParameter(f"{min_cosine:g} is not in [-1, 1]", param_hint="--min-cosine")
    try:
        dim_values = inp.parse_dims(dims)
    except DczError as e:
        raise click.BadParameter(str(e).split(", got ")[-1], param_hint="--dim") from None
    feeds, later = _load_inputs(inputs)
    check_input(model)
    graph, is_dcz = _model_graph(model)
    t0 = time.perf_counter()
    if is_dcz:
        sess, decl, t_decl = _dcz_session(model, provider, compact)
    else:
        sess, decl, t_decl = _plain_session(model, provider), None, 0.0
    t_load = time.perf_counter() - t0 - t_decl  # the session alone, as for a plain .onnx
    if compact and is_dcz:
        done, kept = sess._dcz_compact
        big = [why for why in kept.values() if not why.startswith("fewer than")]  # small ones are meant to stay
        why = ", ".join(f"{big.count(w)} {w}" for w in sorted(set(big)))
        click.echo(f"compact: {len(done)} codebook weight(s) held as uint8 indices"
                   + (f"; {len(big)} kept full size ({why})" if big else ""))
    if decl is None:
        decl = inp.declared_inputs(graph)
    ort_decl = {i.name for i in sess.get_inputs()}
    decl = [d for d in decl if d.name in ort_decl] or inp.declared_from_session(sess)
    feeds = _resolve_inputs(feeds, later, decl, batch, seed)
    given = set(feeds)
    missing = [d for d in decl if d.name not in given]
    # the default synthetic sizes may not suit the model (an audio frame, a recurrent state): try others
    cands = list(inp.size_candidates(decl)) if missing else [(1.0, False)]
    # a given input's batch is the batch of the synthetic ones (and of the states tied to it)
    batch = next((feeds[d.name].shape[0] for d in decl if d.name in feeds and d.shape and not isinstance(d.shape[0], int)
                  and feeds[d.name].ndim == len(d.shape)), batch)
    first = None
    for k, (scale, tie) in enumerate(cands):
        trial = dict(feeds)
        if missing:
            synth = inp.synthetic_inputs(missing, batch, seed, dim_values, scale, batch if tie else 0)
            for name, v in inp.sample_feeds(synth, missing, 0, batch).items():
                trial.setdefault(name, v)
        inp.check_inputs(sess, trial)
        t0 = time.perf_counter()
        try:
            outs = _ort("ONNX Runtime cannot run the model", sess.run, None, trial)
        except click.ClickException as e:
            first = first or e
            if k == len(cands) - 1:
                if missing:
                    raise click.ClickException(f"{first.format_message()}; give inputs with --input NAME=FILE.npy "
                                               "or sizes with --dim NAME=VALUE") from None
                raise first from None
            continue
        t_first = time.perf_counter() - t0
        break
    feeds = trial
    if (scale, tie) != (1.0, False):
        what = f"at x{scale:g} the default sizes of symbolic dims" if scale != 1 else "at the default sizes"
        click.echo(f"note: synthetic inputs {what}" + ("; unnamed dims of fixed-first-axis inputs (states) tied to "
                   "the batch" if tie else "") + " (the defaults did not run); --dim NAME=VALUE sets them")
    for i in sess.get_inputs():
        src = "given" if i.name in given else "synthetic"
        click.echo(f"input  {_escape(i.name)}: {feeds[i.name].dtype} {list(feeds[i.name].shape)} ({src})")
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
    failed = False
    if compare:
        failed = _compare(sess, names, decl, compare, provider, given, feeds, calibration, calibration_samples,
                          dim_values, seed, max_error, min_cosine, sizes=(scale, tie))
    if bench:
        times = []
        for _ in range(bench):
            t0 = time.perf_counter()
            _ort("ONNX Runtime cannot run the model", sess.run, None, feeds)
            times.append(time.perf_counter() - t0)
        click.echo(f"bench ({provider}{', compact' if compact else ''}{'' if is_dcz else ', plain ONNX'}): load "
                   f"{t_load * 1e3:.1f} ms, first run {t_first * 1e3:.2f} ms, {bench} runs p50 {_pct(times, 50):.3f} ms "
                   f"p99 {_pct(times, 99):.3f} ms")
    if failed:
        sys.exit(1)


def _compare(sess, names, decl, compare, provider, given, feeds, calibration, samples, dims, seed, max_error,
             min_cosine, sizes=(1.0, False)) -> bool:
    """Run both models on the calibration set and print the metrics; True when the gate fails.
    ``sizes``: (scale, tie) of synthetic inputs the model ran on (dcformat.inputs.probe_sizes)."""
    import numpy as np

    from . import fidelity
    from . import inputs as inp

    ref = _plain_session(compare, provider)
    ref_names = [o.name for o in ref.get_outputs()]
    if {i.name for i in ref.get_inputs()} != {i.name for i in sess.get_inputs()}:
        raise click.ClickException(f"cannot compare: {compare} takes inputs "
                                   f"{inp.describe(ref.get_inputs())}, the model takes "
                                   f"{', '.join(i.name for i in sess.get_inputs())}")
    if given:  # the given arrays are the one sample set
        calib = {d.name: feeds[d.name] for d in decl}
        cdecl = [inp.Declared(d.name, d.dtype, [None] * feeds[d.name].ndim, None, d.type_name) for d in decl]
        what = "the given inputs"
        if calibration:
            raise click.UsageError("--calibration and --input exclude each other")
    elif calibration:
        calib = inp.load_calibration(calibration, decl, samples)
        cdecl, what = decl, _escape(calibration)
    else:
        n = samples or inp.DEFAULT_SAMPLES
        calib = inp.synthetic_inputs(decl, n, seed, dims, sizes[0], bool(sizes[1]))
        cdecl, what = decl, "synthetic inputs"
    if given and all(a.ndim == 0 for a in calib.values()):
        cdecl = decl
    got = _ort("ONNX Runtime cannot run the model", inp.run_set, sess, calib, cdecl, 8, None, names)
    by_name = set(names) <= set(ref_names)
    ref_out_names = names if by_name else ref_names[: len(names)]
    want = _ort(f"cannot run {compare}", inp.run_set, ref, calib, cdecl, 8, None, ref_out_names)
    if not by_name:
        click.echo(f"compare: output names differ; comparing by position ({', '.join(map(_escape, ref_out_names))})")
        want = {n: want[r] for n, r in zip(names, ref_out_names)}
    if len(ref_names) != len(names):
        click.echo(f"compare: {_escape(compare)} has {len(ref_names)} outputs, the model {len(names)}")
    m = fidelity.compare(want, got, [n for n in names if n in want])
    click.echo(f"compare with {_escape(compare)} on {m['samples']} samples ({what}):")
    for line in fidelity.lines(m, "compare "):
        click.echo(_escape(line))
    failed = []
    for n, o in m["outputs"].items():
        if o["shape_mismatch"]:
            failed.append(f"{n}: shapes differ")
            continue
        if max_error is not None and not o["rel_l2"] <= max_error:
            failed.append(f"{n}: relative L2 error {o['rel_l2']:.3g} > --max-error {max_error:g}")
        if min_cosine is not None and o["cosine_min"] is not None and not o["cosine_min"] >= min_cosine:
            failed.append(f"{n}: worst-sample cosine {o['cosine_min']:.6f} < --min-cosine {min_cosine:g}")
    for f in failed:
        click.echo(f"FAIL {_escape(f)}", err=True)
    if (max_error is not None or min_cosine is not None) and not failed:
        click.echo("compare: within tolerance")
    del np
    return bool(failed)


def run_main(argv=None):
    if argv is not None:  # a caller in this process (tests): its interpreter goes on
        return run(dcrun, argv, prog_name="dcrun")
    try:
        run(dcrun, None, prog_name="dcrun")
    except SystemExit as e:
        _exit_now(e.code)


def _exit_now(code) -> "NoReturn":  # noqa: F821
    """End a command-line process at once, with SystemExit's status, once stdout and stderr are flushed.

    Skips the interpreter's teardown: freeing a model's weights and ORT's session, module by module
    clean-up. Nothing is left to do by then (files are written and closed, no atexit work is ours),
    and on the 9.2M-parameter benchmark MLP it was ~40-50 ms of a ~380 ms `dcrun` (tools/bench_startup.py)."""
    import os

    if code is None:
        code = 0
    elif not isinstance(code, int):  # as the interpreter does for sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the status already says so
            pass
    os._exit(code)
