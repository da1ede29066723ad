"""dcconvert: PyTorch / ONNX / safetensors checkpoint -> .dcz (pruning, weight sharing, Huffman coding)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
import time
from typing import TYPE_CHECKING

import click

import dcformat
from dcformat.cliutil import _escape, check_distinct, check_output, run, times_smaller
from dcformat.table import render

from . import settings as st
from .defaults import (DEFAULT_BITS, DEFAULT_MAX_ERROR, DEFAULT_METRIC, DEFAULT_MIN_SIZE, DEFAULT_SPARSITY,
                       GRAPH_OPT_MODES, INITS, METRIC_NAMES, parse_strength)
from .defaults import DEFAULT_STRENGTH as DEFAULT_ECVQ
from .errors import ConvertError

if TYPE_CHECKING:
    from . import compress as cmp

# numpy and the heavy modules (compress, calibrate, budget, sources...) are imported inside the functions
# that use them, so that --help and --version stay fast (tests/test_cli_surprises.py checks it)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return st.shape(text)
    except st.SettingError as e:
        raise click.BadParameter(str(e), param_hint="--input-shape") from None


def _roles(text):
    from .roles import parse_overrides

    try:
        return parse_overrides(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--role") from None


def _layer(option, text, convert, default=None):
    try:
        return st.LayerSetting.parse(option, text, convert, default)
    except st.SettingError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1], param_hint=option) from None


def _progress():
    """A callback drawing a progress bar over layers on a terminal (stderr), or None."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("compressing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[layer]}", markup=False), transient=True, console=Console(file=sys.stderr))
    task = prog.add_task("layers", total=None, layer="")

    def update(done, total, name):
        prog.update(task, completed=done, total=total, layer=_escape(name)[-50:])

    return prog, update


SUMMARY_DROP = ["gap bits", "encoding", "scales", "role", "action", "x fp32", "shape"]  # least useful first


MAX_KEPT_LINES = 4  # tensors kept raw for the same reason named one a line; more share one line
SMALL = 64  # tensors with fewer elements share one row of the table (as in dcinspect); --json lists them all


def _bits_cell(r: dict) -> str:
    """The table's bits: a codebook's index bits, ``m7`` for floats rounded to 7 mantissa bits, or -."""
    if r["bits"] is not None:
        return str(r["bits"])
    return f"m{r['mantissa']}" if r.get("mantissa") is not None else "-"


def summary_table(result: dict) -> tuple[list[str], list[list[str]], list[str], list[dict]]:
    """(columns, rows, footer, the small tensors summed in one row) of dcconvert's per-tensor table: a
    model's hundreds of 1-element Constants do not fill the terminal."""
    cols = ["tensor", "shape", "params", "role", "action", "sparsity", "bits", "scales", "encoding", "gap bits", "bytes",
            "x fp32"]
    layers = result["layers"]
    small = [r for r in layers if r["params"] < SMALL]
    small = small if len(small) >= 2 else []
    ids = {id(r) for r in small}
    rows = [[r["name"], "x".join(map(str, r["shape"])) or "()", f"{r['params']:,}", r.get("role") or "-",
             r["action"] + (" (OBS)" if r.get("compensated") else ""), f"{r['sparsity']:.1%}",
             _bits_cell(r), r.get("scales") or "-", r["encoding"],
             "-" if r["gap_bits"] is None else str(r["gap_bits"]),
             f"{r['bytes']:,}", "-" if r["ratio"] is None else f"{r['ratio']:.1f}"] for r in layers if id(r) not in ids]
    if small:
        params, nbytes = sum(r["params"] for r in small), sum(r["bytes"] for r in small)
        zeros = sum(r["sparsity"] * r["params"] for r in small)
        rows.append([f"+ {len(small)} small tensors", "", f"{params:,}", "", "", f"{zeros / max(params, 1):.1%}", "", "",
                     "", "", f"{nbytes:,}", f"{params * 4 / max(nbytes, 1):.1f}"])
    t = result["totals"]
    footer = ["total", "", f"{t['params']:,}", "", "", f"{t['sparsity']:.1%}", "", "", "", "", f"{t['tensor_bytes']:,}",
              f"{t['params'] * 4 / max(t['tensor_bytes'], 1):.1f}"]
    return cols, rows, footer, small


def summary(result: dict) -> None:
    cols, rows, footer, small = summary_table(result)
    t = result["totals"]
    render(None, cols, rows, right=set(cols) - {"tensor", "shape", "role", "action", "scales", "encoding"}, footer=footer,
           drop=SUMMARY_DROP, more="a wider terminal or --json shows them")
    if small:
        click.echo(f"+ {len(small)} small tensors: those of fewer than {SMALL} elements, summed in one row; "
                   f"--json or dcinspect {_escape(result['output'])} --all lists them")
    click.echo(f"{_escape(result['source']['file'])} ({result['source']['kind']}, {result['source']['bytes']:,} bytes) -> "
               f"{_escape(result['output'])} ({result['dcz_bytes']:,} bytes): {times_smaller(result['ratio'])}; "
               f"{t['params']:,} parameters, {8 * result['dcz_bytes'] / max(t['params'], 1):.2f} bits/param; "
               f"{result['seconds']:.1f} s ({result['seconds'] * 1e6 / max(t['params'], 1):.1f} s per million parameters)")
    for note in result["source"]["notes"]:
        click.echo(f"note: {_escape(note)}")
    for line in fidelity_lines(result):
        click.echo(line)


def fidelity_lines(result: dict) -> list[str]:
    """The summary's lines about calibration, measured fidelity, the budget and raw tensors."""
    from dcformat import fidelity

    out = []
    fid = result.get("fidelity") or {}
    if fid.get("measured"):
        cal = fid["calibration"]
        what = "synthetic inputs built from the graph's declared inputs" if cal["synthetic"] else _escape(cal["source"])
        text = fidelity.METRICS.get(fid.get("metric"), fidelity.METRIC_TEXT)
        out.append(f"fidelity on {cal['samples']} calibration samples ({what}); error = {text}:")
        out += [_escape(x) for x in fidelity.lines(fid, "  ")]
        b = fid.get("budget")
        if b is not None:
            verdict = "within" if fid["within_budget"] else "OVER"
            srch = fid.get("search")
            took = (result.get("search") or {}).get("seconds")
            extra = (f"; search: {srch['trials']} trial runs, {len(srch.get('replans') or [])} re-plan(s), "
                     f"{len(srch['backoffs'])} back-off(s), "
                     f"{sum(r['kept'] for r in srch.get('refinements') or [])} refinement(s)"
                     + (f", {took:.1f} s" if took is not None else "") if srch else "")
            err, at = fid.get("error", fid["max_rel_l2"]), fid.get("error_output", fid["worst_output"])
            metric = "" if fid.get("metric", DEFAULT_METRIC) == DEFAULT_METRIC else f" --metric {fid['metric']}"
            out.append(f"error {float(err):.3g} ({_escape(str(at))}): {verdict} the budget "
                       f"--max-error {b:g}{metric}{extra}")
            if srch and srch.get("held_out_error") is not None:
                out.append(f"search: error {srch['verified_error']:.3g} on the {cal['samples'] - srch['held_out_samples']}"
                           f" samples it fitted on, {srch['held_out_error']:.3g} on {srch['held_out_samples']} held out")
    elif fid:
        out.append(f"fidelity: not measured ({fid.get('reason')}); per-tensor reconstruction SNR instead:")
        for name, v in (fid.get("tensor_snr_db") or {}).items():
            out.append(f"  {_escape(name)}: {v if isinstance(v, str) else format(v, '.1f')} dB")
    grouped: dict[str, list] = {}
    single: dict[str, list] = {}  # the same reason for many tensors (a model's subgraph copies): one line
    for r in result["layers"]:
        why = r.get("reason")
        if r["action"] in ("pruned+shared", "rounded") or not why:
            continue
        if why.startswith(("small", "not float", "--lossless")):
            grouped.setdefault(why.split(" (")[0], []).append(r)
        else:
            single.setdefault(why, []).append(r)
    for why, rs in single.items():
        if len(rs) <= MAX_KEPT_LINES:
            out += [f"kept raw: {_escape(r['name'])} ({r['params']:,} params): {_escape(why)}" for r in rs]
        else:
            big = sorted(rs, key=lambda r: -r["params"])[:3]
            out.append(f"kept raw: {len(rs)} tensor(s), {sum(r['params'] for r in rs):,} params: {_escape(why)} "
                       f"(largest: {', '.join(_escape(r['name']) for r in big)}; --json lists them)")
    for why, rs in grouped.items():
        detail = rs[0]["reason"] if why == "small" else why
        out.append(f"kept raw: {len(rs)} tensor(s), {sum(r['params'] for r in rs):,} params: {_escape(detail)}")
    return out


def ort_reason(message: str, width: int = 200) -> str:
    """The part of an ONNX Runtime error a user can act on: the innermost 'Status Message' (what failed)
    and the node it names, cut at a word, not mid-number: ``Pad reflect: post-pad (64) exceeds maximum
    allowed (15) for axis 1. Input shape:{1,16} (node .../stft/padding/Pad)``."""
    import re

    text = " ".join(message.split())
    nodes = re.findall(r"running (\w+) node\. Name:'([^']*)'", text)
    if "Status Message: " in text:
        text = text.rsplit("Status Message: ", 1)[1]
    else:
        text = re.sub(r"^.*?\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if nodes:
        text += f" (node {nodes[-1][1]}, {nodes[-1][0]})"
    if len(text) > width:
        text = text[:width].rsplit(" ", 1)[0] + " ..."
    return text


def _from_ort(e: BaseException) -> bool:
    """Whether ONNX Runtime raised ``e``: one of its own classes, or raised in its Python wrapper."""
    if type(e).__module__.split(".")[0] == "onnxruntime":
        return True
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and f"{os.sep}onnxruntime{os.sep}" in last.tb_frame.f_code.co_filename


def _ort_call(what, fn, *args, _step: str = "", **kw):
    """``fn(*args, **kw)``; ONNX Runtime's failures become ``ConvertError("{what}: {message}")``, any
    other exception (a bug of ours, not the model's) one naming ``_step`` that does not blame ONNX Runtime."""
    try:
        return fn(*args, **kw)
    except (click.ClickException, dcformat.DczError):
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own classes
        from dcformat.errors import first_line

        if _from_ort(e):
            raise ConvertError(f"{what}: {first_line(e)}") from None
        raise ConvertError(f"internal error {_step or 'converting'} ({type(e).__name__}: {first_line(e)}; not an "
                           "ONNX Runtime failure: please report it)") from None


def _compensation_note(done: int, without: list, reasons: dict, show: int = 2) -> str:
    """The report's note on the layers that keep plain rounding, grouped by why (hessian.for_model's reasons)."""
    from . import hessian
    from .obs import MAX_COLUMNS

    kinds = {hessian.FEW_ROWS: f"saw fewer than {hessian.MIN_ROWS_PER_FEATURE} calibration rows per input feature "
                               "(more --calibration-samples would include them)",
             hessian.TOO_WIDE: f"too wide (over {MAX_COLUMNS:,} input features)"}
    groups: dict = {}
    for name in without:
        why = reasons.get(name, "no usable H")
        groups.setdefault(kinds.get(getattr(why, "kind", None), why), []).append(name)
    parts = [f"{len(names)} {why}: " + ", ".join(names[:show]) + (f" and {len(names) - show} more"
                                                                   if len(names) > show else "")
             for why, names in groups.items()]
    return (f"error compensation: {done} of {done + len(without)} layers; the others keep plain rounding: "
            + "; ".join(parts))


def convert(src_path, out, s: cmp.Settings, *, input_shapes=None, trust_code=False, model_factory=None, opset=None,
            progress=None, calibration=None, calibration_samples=None, dims=None, max_error=None, manual=False,
            echo=None, trust_pickle=False, inputs=None, metric=DEFAULT_METRIC) -> dict:
    """Convert one file; returns the report (also used by --json and --report).

    ``manual``: explicit pruning/bits flags were given (exact choices, no search unless ``max_error``).
    ``inputs``: ``--input`` specs (dcformat.inputs.InputSpec): a PyTorch export's example inputs; for
    an ONNX model, constants and sizes of its synthetic calibration inputs. ``metric``: the model error
    the budget bounds (dcformat.fidelity.METRICS)."""
    from dcformat import fidelity

    from . import budget as bud
    from . import calibrate as cal
    from . import compress as cmp
    from . import graphopt, hessian, sources

    t0 = time.perf_counter()
    src = sources.load(src_path, input_shapes=input_shapes, trust_code=trust_code or trust_pickle, model_factory=model_factory,
                       opset=opset, inputs=inputs, calibration=calibration)
    fixed = None
    if inputs and src.kind == "onnx":  # --input NAME=VALUE / NAME:SHAPE: the synthetic calibration inputs
        from dcformat.inputs import calibration_hints, declared_inputs

        fixed, given_dims = calibration_hints(inputs, declared_inputs(src.graph))
        dims = {**given_dims, **(dims or {})}
    for option, pat in _apply_patterns(src, s):
        raise click.UsageError(f"{option}: pattern {pat!r} matches no tensor of {src_path}")
    originals = dict(src.weights)  # compress() drops its references as it goes; fidelity needs them
    searching = not s.lossless and (not manual or max_error is not None)
    limit = max_error if max_error is not None else cal.DEFAULT_MAX_ERROR
    fid, search_rec = None, None
    if src.graph is not None:
        dims = {**src.dims, **(dims or {})}  # sizes of dims the example inputs named, unless --dim sets them
        decl, calib, cdesc = cal.calibration(src.graph, calibration, calibration_samples, dims, s.seed, fixed=fixed)
        try:
            ref = _ort_call(f"ONNX Runtime cannot run {src_path} on the "
                            f"{'synthetic ' if cdesc['synthetic'] else ''}calibration inputs", cal.run_model, src.graph,
                            originals, calib, decl, _step="while running the model on the calibration inputs")
        except ConvertError as e:
            ref, first = None, e
            if cdesc["synthetic"]:  # the default sizes may not suit the model (an audio frame, a recurrent state)
                scale, tie, _ = cal.probe(src.graph, originals, dims, s.seed, fixed)
                if scale is not None and (scale, tie) != (1.0, False):
                    decl, calib, cdesc = cal.calibration(src.graph, None, calibration_samples, dims, s.seed, scale, tie,
                                                         fixed)
                    try:
                        ref = cal.run_model(src.graph, originals, calib, decl)
                    except Exception:  # noqa: BLE001 - ONNX Runtime's own errors
                        ref = None
                if ref is not None:
                    from dcformat.inputs import describe_sizes

                    src.notes.append(f"synthetic inputs: {describe_sizes(scale, tie)} (on the defaults the model did "
                                     f"not run: {ort_reason(str(first))}); --dim NAME=VALUE sets them")
            if ref is None:
                hint = ("; give real inputs with --calibration or sizes with --dim NAME=VALUE" if cdesc["synthetic"] else "")
                if searching:  # nothing to measure against: no safe choice can be made
                    raise ConvertError(f"{first}{hint}") from None
                unmeasured = f"{first}{hint}"
        if graphopt.wanted(s.graph_opt, s.lossless):
            originals = _optimise_graph(src, originals, ref, calib, decl, s)
        # the search fits on part of the calibration set and verifies its result on the rest (held out)
        fit, held = cal.split(calib, decl) if (ref is not None and searching) else (calib, None)
        if ref is not None and s.compensate and not s.lossless:  # the layers' inputs: compensated pruning and sharing
            skipped: dict = {}
            s.layers, without = _ort_call("ONNX Runtime failed while collecting the layers' inputs", hessian.for_model,
                                          src.graph, originals, fit, decl, src.roles, s.min_size, s.seed,
                                          reasons=skipped, _step="while collecting the layers' inputs")
            if without:
                src.notes.append(_compensation_note(len(s.layers), without, skipped))
        if ref is None:
            pass
        elif searching:
            fixed = {}
            if s.sparsity.default is not None or s.sparsity.patterns:
                fixed["fixed_sparsity"] = lambda n: s.sparsity.get(n)
            if s.bits.default is not None or s.bits.patterns:
                fixed["fixed_bits"] = lambda n: s.bits.get(n)
            search_rec, reasons = _ort_call("ONNX Runtime failed during the error-budget search", bud.search,
                                            src.graph, originals, fit, decl, limit, min_size=s.min_size, init=s.init,
                                            seed=s.seed, progress=progress, echo=echo, layers=s.layers,
                                            strength=s.ecvq.get, axes=src.out_axes,
                                            channel_scales=s.channel_scales, held=held, metric=metric,
                                            sequential=s.sequential, _step="in the error-budget search", **fixed)
            s.plan, s.reasons = search_rec.plan, reasons
            from .sequential import install

            install(search_rec, src.weights, s.layers)  # compress builds what the search verified
    else:
        if calibration is not None or max_error is not None:
            raise ConvertError(f"{src_path} holds weights only (no graph): the model cannot be run, so "
                               f"{'--calibration' if calibration is not None else '--max-error'} cannot be used; "
                               "give an ONNX model (or a PyTorch model with its graph)")
        if not manual and not s.lossless:  # nothing can be measured: the safe fixed setting
            s.sparsity.default, s.bits.default = 0.0, 8
            src.notes.append("weights only: fidelity cannot be measured, so no search; 8-bit weight sharing without "
                             "pruning (give --sparsity/--bits to choose)")
    recon: dict = {}
    tensors, rows = cmp.compress(src, s, progress, recon)
    params = sum(r["params"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    if src.graph is not None and ref is None:
        fid = {"schema": fidelity.SCHEMA, "measured": False, "reason": unmeasured,
               "tensor_snr_db": cal.tensor_snr(originals, recon), "warning": True}
    elif src.graph is not None:
        new = _ort_call("ONNX Runtime cannot run the compressed model", cal.run_model, src.graph, recon, calib, decl,
                   _step="while running the compressed model")
        m = fidelity.compare(ref, new, metric=metric)
        fid = {"schema": fidelity.SCHEMA, "measured": True, "metric": metric,
               "metric_text": fidelity.METRICS[metric], "calibration": cdesc,
               "budget": limit if searching else None,
               "within_budget": (m["error"] <= limit) if searching else None,
               "error": m["error"], "error_output": m["error_output"],
               "max_rel_l2": m["max_rel_l2"], "worst_output": m["worst_output"], "min_cosine": m["min_cosine"],
               "outputs": m["outputs"]}
        if search_rec is not None:
            d = search_rec.describe()
            # no timing: same bytes each run; verified_error on the samples the search fitted on, held_out_error on
            # the others (calibration.samples counts both)
            fid["search"] = {k: d[k] for k in ("trials", "verified_error", "held_out_error", "held_out_samples",
                                               "replans", "backoffs", "refinements")}
        warn = m["error"] > limit or (not searching and m["min_cosine"] is not None
                                           and m["min_cosine"] < cal.WARN_COSINE)
        fid["warning"] = bool(warn and not s.lossless)
    else:
        snr = cal.tensor_snr(originals, recon)
        fid = {"schema": fidelity.SCHEMA, "measured": False, "reason": "weights only: no graph to run",
               "tensor_snr_db": snr}
        for r in rows:
            if r["name"] in snr:
                r["snr_db"] = snr[r["name"]]
    del recon, originals
    fid = fidelity.rounded(fidelity.json_safe(fid))  # the numbers as stored (and printed), in the report too
    meta = {  # fewer bytes than the report (issue 16): the fidelity without its defaults, no unset settings
        "producer": f"dcconvert (dcz {dcformat.__version__})",
        "source": {"file": os.path.basename(src.path), "kind": src.kind, "sha256": src.sha256[:SHA256_DIGITS],
                   "bytes": src.size},
        "settings": stored_settings(s.describe()),
        "fidelity": fidelity.compact(fid),
    }
    graph = cmp.compact_graph(src.graph)
    if graph is not None:
        graph, kept = cmp.inline_constants(graph, tensors)
        inlined = {t.name for t in tensors} - {t.name for t in kept}
        for r in rows:
            if r["name"] in inlined:  # in the graph's TensorProto: no record
                r.update(encoding="graph", bytes=0, ratio=None)
        tensors = kept
    try:
        size = dcformat.write(out, tensors, graph=graph, metadata=meta, dictionary=True)
    except OSError as e:  # the temporary file beside it, or the rename
        raise ConvertError(f"cannot write {out}: {e.strerror or e}") from None
    return {
        "source": {"file": src.path, "kind": src.kind, "sha256": src.sha256, "bytes": src.size, "notes": src.notes,
                   **({"graph_opt": src.graph_opt} if src.graph_opt else {})},
        "output": os.fspath(out), "dcz_bytes": size, "ratio": src.size / size if size else None,
        "settings": s.describe(), "layers": rows,
        "totals": {"params": params, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params if params else 0.0,
                   "tensor_bytes": sum(r["bytes"] for r in rows), "fp32_bytes": params * 4},
        "seconds": time.perf_counter() - t0,
        "fidelity": fid,
        **({"search": fidelity.json_safe(search_rec.describe())} if search_rec is not None else {}),
    }


def _apply_patterns(src, s) -> list[tuple[str, str]]:
    """Apply --role overrides to ``src.roles``; (option, pattern) of each --role / per-layer pattern that
    matches no tensor of ``src``."""
    from .roles import apply_overrides

    names = list(src.weights)
    unmatched = [("--role", pat) for pat in apply_overrides(src.roles, names, s.roles)]
    for setting in s.all():
        unmatched += [(setting.option, pat) for pat, _ in setting.patterns
                      if not any(fnmatch.fnmatchcase(n, pat) for n in names)]
    return unmatched


def _optimise_graph(src, originals: dict, ref, calib, decl, s) -> dict:
    """The source's graph rewritten by ONNX Runtime's basic optimisations (converters.graphopt) when the rewrite
    is plain ONNX, no larger and computes the same outputs on the calibration inputs; ``src`` is changed in
    place (graph, weights, roles) and the weights to compress are returned (``originals`` where it is kept)."""
    from dcformat.errors import first_line

    from . import calibrate as cal
    from . import graphopt
    from .roles import mark_analytic
    from .sources import weight_roles

    if ref is None:
        src.notes.append("graph: kept as given (ONNX Runtime's optimisations cannot be checked on a model that "
                         "did not run)")
        return originals
    got = graphopt.optimize(src.graph, originals)
    if isinstance(got, str):
        src.notes.append(f"graph: kept as given ({got})")
        return originals
    graph, weights, info = got
    try:
        new = cal.run_model(graph, weights, calib, decl)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors
        src.notes.append(f"graph: kept as given (the optimised graph did not run: {first_line(e)})")
        return originals
    ok, worst = graphopt.agrees(ref, new)
    if not ok:
        src.notes.append(f"graph: kept as given (ONNX Runtime's optimised graph differs from it by {worst:.2g} "
                         f"relative L2 on the calibration inputs, over {graphopt.AGREE_REL_L2:g})")
        return originals
    info["agreement"] = worst
    src.graph, src.weights = graph, weights
    src.roles, src.out_axes = weight_roles(graph, weights)
    mark_analytic(src.roles, weights)
    gone = [pat for _, pat in _apply_patterns(src, s)]
    if gone:
        src.notes.append(f"graph: pattern{'s' if len(gone) > 1 else ''} {', '.join(map(repr, gone))} matched only "
                         "tensors that ONNX Runtime's optimisations folded away (--graph-opt none keeps them)")
    src.graph_opt = info
    src.notes.append(graphopt.describe(info))
    return dict(weights)


# the metadata's source.sha256: the first 16 hex digits of the source file's SHA-256 (64 bits tell source files
# apart; 30 bytes fewer than all 64 in a LeNet-5 file, tools/bench_ecvq.py); the report has all 64
SHA256_DIGITS = 16


def stored_settings(d: dict) -> dict:
    """The settings as the metadata stores them: those left unset (None) left out (dcinspect does not list
    them), and ``sequential`` and ``graph_opt`` unless given (newer than the preset dictionary: ``sequential``'s
    ``false`` took 16 bytes of a LeNet-5 file); the report keeps them all."""
    return {k: v for k, v in d.items() if v is not None and not (k == "sequential" and v is False)
            and not (k == "graph_opt" and v == "auto")}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="the .dcz to write (default: MODEL with .dcz)")
@click.option("--sparsity", metavar="[PATTERN=]F,...", help="fraction of weights to prune per layer, in [0, 1), "
              "e.g. 0.9 or 'fc*=0.92,conv*=0.6' (0 keeps an already pruned model; --ecvq may still zero its smallest "
              "weights, --ecvq 0 does not). Without any pruning/bits flag "
              "dcconvert chooses within --max-error; once one is given, layers it leaves unset get "
              f"{DEFAULT_SPARSITY['conv']} conv, {DEFAULT_SPARSITY['fc']} fc, 0 embedding")
@click.option("--threshold-std", metavar="[PATTERN=]Q,...", help="also prune weights below Q x the layer's standard deviation")
@click.option("--threshold", metavar="[PATTERN=]T,...", help="also prune weights with |w| <= T")
@click.option("--prune-neurons", metavar="[PATTERN=]F,...",
              help="prune this fraction of whole output neurons / conv filters (smallest L2 norm); shapes are kept")
@click.option("--bits", metavar="[PATTERN=]B,...", help="weight-sharing bits 1..8 (codebook of 2**B centroids; "
              f"when set explicitly, unset layers get {DEFAULT_BITS['conv']} conv, {DEFAULT_BITS['fc']} fc, "
              f"{DEFAULT_BITS['embedding']} embedding)")
@click.option("--ecvq", metavar="[PATTERN=]S,...",
              help="entropy-constrained weight sharing strength S >= 0 per layer: each weight takes the centroid "
              "minimising its error + S x (the plain k-means error per weight) x its code length in bits, so rare "
              "centroids empty and small weights may be pruned where their position and index cost more than they "
              f"are worth; 0 is plain k-means (default {DEFAULT_ECVQ:g}; 1-5 saves more bytes at more error)")
@click.option("--role", "role_overrides", metavar="PATTERN=ROLE,...",
              help="what a tensor is, overriding what its consumers say: conv, fc, embedding (compressed), "
                   "norm, bias, analytic, other (stored exactly); e.g. 'stft.*=analytic,lm_head.weight=fc'")
@click.option("--compensate/--no-compensate", default=True, show_default=True,
              help="with a graph: prune and share each Conv/Gemm/MatMul weight knowing its inputs on the calibration "
                   "set (importance-weighted codebook, OBS/GPTQ error compensation), not by magnitude alone")
@click.option("--sequential/--no-sequential", default=False, show_default=True,
              help="with --compensate and the --max-error search: fit the planned layers in graph order, each to the "
                   "original model's outputs from the inputs the already-compressed layers before it give "
                   "(compensates their error; one extra model run per layer on the calibration samples and verification, 2-7x the conversion time on PP-OCR)")
@click.option("--channel-scales", type=click.Choice(("auto", "on", "off")), default="auto", show_default=True,
              help="one scale per output channel (W[c] = scale[c] x codebook[index]; Conv filters, Gemm/MatMul "
                   "output columns, embedding rows): auto lets the --max-error search pick it per layer where it "
                   "makes the file smaller; on uses it for every shared tensor with channels, explicit --bits too; "
                   "off keeps one codebook per tensor (format 1.0/1.1 files)")
@click.option("--graph-opt", type=click.Choice(GRAPH_OPT_MODES), default="auto", show_default=True,
              help="ONNX graphs: apply ONNX Runtime's basic, provider-independent optimisations (constant folding, "
                   "BatchNormalization folded into Conv, MatMul+Add into Gemm...) once here, so loading the .dcz "
                   "does not redo them; kept only when the result is plain ONNX, no larger, and gives the same "
                   "outputs on the calibration inputs. auto: basic, except with --lossless (the original graph and "
                   "weights bit for bit); none: the graph as given")
@click.option("--init", type=click.Choice(INITS), default="linear", show_default=True, help="k-means centroid initialisation")
@click.option("--min-size", type=click.IntRange(0), default=DEFAULT_MIN_SIZE, show_default=True,
              help="tensors with fewer elements are stored exactly (biases, norms and small tensors always are)")
@click.option("--lossless", is_flag=True, help="no pruning, no quantization: decoding gives bit-identical weights")
@click.option("--input", "inputs", multiple=True, metavar="SPEC",
              help="an example input for exporting TorchScript / nn.Module / --model to ONNX, named as forward's "
              "argument (repeatable): NAME:SHAPE[:DTYPE] (input_ids:1x128:int64; DTYPE a numpy/ONNX name, default "
              "float32; values as synthetic calibration inputs: ids below the embedding rows, masks ones; dim 0 is "
              "the dynamic batch, or name dynamic dims: 1xsequence=128), NAME=VALUE or NAME:int|float|bool=VALUE (an "
              "int/float/bool argument such as sr=16000, a constant of the exported graph), NAME=FILE.npy, or "
              "FILE.npz (arrays by name). Without it the first sample of --calibration. For ONNX models NAME=VALUE "
              "and NAME:SHAPE fix synthetic calibration inputs")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D,D,...",
              help="deprecated form of --input: an unnamed float32 input of this shape (repeat per input; batch stays "
              "dynamic)")
@click.option("--opset", type=click.IntRange(7, 23), help="ONNX opset for exported PyTorch models")
@click.option("--model", "model_factory", metavar="PKG.MODULE:FACTORY",
              help="build the model with this function so a state_dict gets its graph (imports and runs that "
              "module: needs --trust-code)")
@click.option("--trust-code", "--trust-pickle", "trust_code", is_flag=True,
              help="allow the loaders that RUN CODE FROM THE FILE, to get a graph: torch.load(weights_only=False) "
              "for pickled nn.Modules, torch.jit.load for TorchScript (its __setstate__ can read and write files), "
              "torch.export.load for .pt2 (evaluates shape expressions as Python), and --model's import. Without "
              "it TorchScript and .pt2 give their weights only. Only for files you trust")
@click.option("--max-error", type=float, metavar="E",
              help="error budget: the largest relative L2 output error ||y - y'|| / ||y|| (over all calibration samples, "
              "worst graph output) the compressed model may have; dcconvert chooses each layer's sparsity and bits "
              "(per-layer sensitivity scan, smallest estimated file within E, verified on the whole model; the last "
              "quarter of the calibration samples is held out of the search and the plan tightened until they are "
              "within E too: the report gives both errors). "
              f"Default: with no --sparsity/--bits/--threshold*/--prune-neurons flag, E = {DEFAULT_MAX_ERROR:g}. "
              "--metric decision measures probability outputs by their decisions instead")
@click.option("--metric", type=click.Choice(METRIC_NAMES), default=DEFAULT_METRIC, show_default=True,
              help="the model error --max-error bounds: rel_l2, the relative L2 error of every output; decision, for "
                   "outputs that are probabilities (softmax over the last axis: arg-max decisions; values in [0, 1]: "
                   "p > 0.5) the root mean square over all decisions of the share of each decision's margin the "
                   "compressed model closed (1 = changed), relative L2 for other outputs; the report names each "
                   "output's kind and counts its changed decisions")
@click.option("--calibration", type=click.Path(), metavar="PATH",
              help="calibration inputs: an .npz of arrays keyed by input name (first axis = samples), an .npy for a "
              "single-input model, or a directory of them (default: synthetic inputs from the graph's declared inputs)")
@click.option("--calibration-samples", type=click.IntRange(1), metavar="N",
              help="use the first N calibration samples (default: 16 synthetic samples, or all in --calibration)")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="size of a symbolic input dimension for synthetic inputs, e.g. --dim sequence=128 (repeatable)")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="seed of random centroid initialisations and of synthetic calibration inputs")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of the table")
@click.option("--report", type=click.Path(dir_okay=False), help="also save the JSON report to this file")
@click.option("-q", "--quiet", is_flag=True, help="no table, no progress bar")
@click.option("-f", "--force", is_flag=True, help="replace an existing .dcz that -o does not name (the default output)")
@click.version_option(dcformat.__version__, prog_name="dcconvert", message="%(prog)s (dcz) %(version)s")
def dcconvert(model, output, sparsity, threshold_std, threshold, prune_neurons, bits, ecvq, role_overrides, compensate,
              sequential, channel_scales, graph_opt, init,
              min_size, lossless,
              inputs, input_shapes, opset, model_factory, trust_code, max_error, metric, calibration, calibration_samples,
              dims,
              seed, as_json, report, quiet, force):
    """Compress MODEL (ONNX, PyTorch .pt/.pth/.bin/.pt2/TorchScript, safetensors) into a .dcz file.

    By default dcconvert measures what it does: it runs the original and the compressed model in
    ONNX Runtime on calibration inputs (--calibration, or synthetic ones) and keeps the relative
    L2 output error within --max-error (default 0.05). Explicit --sparsity/--bits are used as
    given; their fidelity is still measured, with a warning when it is poor.
    """
    if lossless and any(x is not None for x in (sparsity, threshold_std, threshold, prune_neurons, bits, max_error)):
        raise click.UsageError("--lossless excludes --sparsity, --threshold-std, --threshold, --prune-neurons, --bits "
                               "and --max-error")
    if max_error is not None and not (max_error > 0 and max_error < float("inf")):
        raise click.BadParameter(f"{max_error:g} is not a number > 0", param_hint="--max-error")
    if max_error is not None and any(x is not None for x in (threshold_std, threshold, prune_neurons)):
        raise click.UsageError("--max-error chooses the pruning itself: it excludes --threshold-std, --threshold and "
                               "--prune-neurons (--sparsity/--bits fix those choices for the layers they match)")
    from dcformat.inputs import parse_dims, parse_inputs

    try:
        dim_values = parse_dims(dims)
    except dcformat.DczError as e:
        raise click.BadParameter(str(e).split(", got ")[-1], param_hint="--dim") from None
    try:
        input_specs = parse_inputs(inputs)
    except dcformat.DczError as e:
        raise click.UsageError(str(e)) from None
    from . import compress as cmp

    manual = any(x is not None for x in (sparsity, threshold_std, threshold, prune_neurons, bits))
    s = cmp.Settings(
        sparsity=_layer("--sparsity", sparsity, st.fraction),
        threshold_std=_layer("--threshold-std", threshold_std, st.nonneg),
        threshold=_layer("--threshold", threshold, st.nonneg),
        prune_neurons=_layer("--prune-neurons", prune_neurons, st.fraction),
        bits=_layer("--bits", bits, st.bits),
        ecvq=_layer("--ecvq", ecvq, parse_strength, DEFAULT_ECVQ),
        init=init, min_size=min_size, lossless=lossless, seed=seed, roles=_roles(role_overrides), compensate=compensate,
        channel_scales=channel_scales, sequential=sequential, graph_opt=graph_opt,
    )
    shapes = [_shape(x) for x in input_shapes]
    out = output or os.path.splitext(model)[0] + ".dcz"
    if not output and not force and os.path.lexists(out) and os.path.exists(model):  # a file the user did not name
        raise click.UsageError(f"{out} exists; replace it with --force, or name another output with -o")
    check_distinct({"the output": out, **({"--report": report} if report else {})}, {"the input": model})
    check_output(out)
    if report:
        check_output(report, "report")
    prog, update = (None, None) if quiet or as_json else _progress()
    if prog:
        prog.start()
    try:
        result = convert(model, out, s, input_shapes=shapes, inputs=input_specs, trust_code=trust_code,
                         model_factory=model_factory,
                         opset=opset, progress=update, calibration=calibration, calibration_samples=calibration_samples,
                         dims=dim_values, max_error=max_error, manual=manual, metric=metric,
                         echo=None if quiet or as_json else lambda m: click.echo(m, err=True))
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
    fid = result.get("fidelity") or {}
    if fid.get("warning"):
        click.echo(f"warning: {fidelity_warning(fid, manual)}", err=True)


def fidelity_warning(fid: dict, manual: bool) -> str:
    from .defaults import WARN_COSINE

    if not fid.get("measured"):
        return f"fidelity not measured: {fid.get('reason')}"
    budget = fid.get("budget") or DEFAULT_MAX_ERROR
    cos = fid.get("min_cosine")
    if fid.get("metric", DEFAULT_METRIC) == "rel_l2":
        what = f"relative L2 error {float(fid['max_rel_l2']):.3g} on {_escape(str(fid['worst_output']))!r}"
    else:
        what = (f"{fid['metric']} error {float(fid['error']):.3g} on {_escape(str(fid['error_output']))!r} (relative L2 "
                f"error {float(fid['max_rel_l2']):.3g} on {_escape(str(fid['worst_output']))!r})")
    msg = (f"the compressed model's outputs differ from the original's: {what}"
           + (f", worst-sample cosine {cos:.4f}" if cos is not None else "")
           + (f" (over the budget --max-error {budget:g})" if fid.get("budget") is not None
              else f" (poor: error > {budget:g} or cosine < {WARN_COSINE})"))
    if manual and fid.get("budget") is None:
        msg += "; the explicit --sparsity/--bits settings may have broken the model: leave them out to let dcconvert " \
               "choose within --max-error"
    return msg


def main(argv=None):
    run(dcconvert, argv, prog_name="dcconvert")
