"""ONNX Runtime's provider-independent ("basic") graph optimisations, done once at conversion.

ONNX Runtime rewrites every model it loads: constant folding, BatchNormalization folded into the
Conv before it, Add/Mul folded into Conv biases and weights, MatMul + Add into Gemm, Identity and
Dropout removed, Constant nodes turned into initializers. On PP-OCR that is most of its load time
(mobile cls: 14 ms to load the original, 7 ms to load the same graph after those rewrites, 5 ms
with no optimisation at all). Its *basic* level is defined to be semantics-preserving and to run
before the graph is split between execution providers, so a graph rewritten at that level is a
plain ONNX graph (default-domain operators only, checked here) that runs on any provider, and ONNX
Runtime repeats nothing at load but its provider-specific levels. dcconvert therefore stores that
graph unless told not to (``--graph-opt none``; ``--lossless`` keeps the original graph, since
folded weights are not the file's weights bit for bit).

The rewritten graph is kept only when (checked in this order, else the original is kept and the
report says why): ONNX Runtime can load it and write it back, it uses no operator domain the original
did not, its weights take at most GROWTH x the original's bytes (constant folding can materialise a
large tensor, e.g. a Tile or Expand of a small constant; then the rewrite is tried once more without
ONNX Runtime's ConstantFolding, which keeps the other rewrites), and -- checked by the caller on the
calibration inputs (:func:`agrees`) -- its outputs match the original's within AGREE_REL_L2.

Names. Folded weights get ONNX Runtime's names (``ConvBnFusion_W_conv2d_0.w_0``); where such a
name is a prefix of ``<Fusion>_<TAG>_`` parts before an original tensor's name that no longer
exists, the tensor takes that original name back (``conv2d_0.w_0``), so ``--bits PATTERN`` and
``dcinspect original.onnx model.dcz`` line up on them. The BatchNormalization parameters are gone
(folded into the Conv's weight and bias).
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from .defaults import GRAPH_OPT_MODES as MODES  # the command line's choices
GROWTH = 1.02  # the rewritten graph's weights may take at most this many times the original's bytes
GROWTH_SLACK = 4096  # plus this many bytes (a few folded shape constants)
AGREE_REL_L2 = 1e-4  # the rewritten graph's outputs against the original's, relative L2 per output, at most
MAX_MODEL_BYTES = 1_500_000_000  # a larger model is not rewritten (one protobuf message holds < 2 GiB)
_FUSED = re.compile(r"^(?:[A-Za-z0-9]+Fusion_(?:[A-Z0-9]+_)*)+")


def wanted(mode: str, lossless: bool) -> bool:
    """Whether ``--graph-opt mode`` rewrites the graph: auto = yes unless --lossless."""
    return mode == "basic" or (mode == "auto" and not lossless)


def _graphs(graph):
    """``graph`` and every subgraph inside it (If branches, Loop and Scan bodies), depth first."""
    from onnx import AttributeProto

    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _domains(graph, out: set) -> set:
    out.update(n.domain or "" for g in _graphs(graph) for n in g.node)
    return out


def _value_names(graph, out: set) -> set:
    for g in _graphs(graph):
        out.update(i.name for i in g.input)
        out.update(i.name for i in g.initializer)
        for n in g.node:
            out.update(n.input)
            out.update(n.output)
    return out


def restore_names(model, original_names: set) -> dict[str, str]:
    """Initializers named ``<X>Fusion_<TAG>_...<name>`` take ``name`` back where ``name`` was a tensor of
    the original and is free now; returns {ONNX Runtime's name: the name taken back}."""
    from .sources import rename_values

    used = _value_names(model.graph, set())
    done = {}
    for init in model.graph.initializer:
        m = _FUSED.match(init.name)
        if not m:
            continue
        base = init.name[m.end():]
        if base and base in original_names and base not in used:
            used.discard(init.name)
            used.add(base)
            done[init.name] = base
    rename_values(model, done)  # one pass over the graph and its subgraphs for all of them
    return done


def _weight_bytes(weights: dict) -> int:
    return sum(int(a.nbytes) for a in weights.values())


def optimize(graph, weights: dict) -> tuple[object, dict, dict] | str:
    """(rewritten graph with references, its weights, what changed) or why the original stays."""
    import onnx

    from dcformat.graph import fill_weights

    full = onnx.ModelProto()
    full.CopyFrom(graph)
    try:
        fill_weights(full, weights)
    except Exception as e:  # noqa: BLE001 - a graph the converter could not put back together
        return f"the graph could not be rebuilt for ONNX Runtime ({e})"
    data = full.SerializeToString()
    if len(data) > MAX_MODEL_BYTES:
        return f"the model is over {MAX_MODEL_BYTES / 1e9:g} GB"
    before_ops = _op_counts(full.graph)
    domains = _domains(full.graph, set())
    del full
    got = _rewrite(graph, data, weights, domains, ())
    if isinstance(got, tuple) and got[2] > GROWTH * got[3] + GROWTH_SLACK:  # folding materialised large constants:
        grown = got  # the rewrite without constant folding still folds BN into Conv, Constants into initializers
        got = _rewrite(graph, data, weights, domains, NO_FOLDING)
        if isinstance(got, tuple) and got[2] > GROWTH * got[3] + GROWTH_SLACK:
            return f"constant folding would store {grown[2]:,} bytes of weights instead of {grown[3]:,}"
    if isinstance(got, str):
        return got
    new_graph, new_weights, after, before, renamed, disabled = got
    after_ops = _op_counts(new_graph.graph)
    folded = {op: n - after_ops.get(op, 0) for op, n in before_ops.items() if n > after_ops.get(op, 0)}
    info = {"level": "basic", "nodes": [sum(before_ops.values()), sum(after_ops.values())],
            "weights": [len(weights), len(new_weights)], "weight_bytes": [before, after],
            "removed": dict(sorted(folded.items(), key=lambda kv: (-kv[1], kv[0]))),
            "renamed": len(renamed), **({"disabled": list(disabled)} if disabled else {})}
    return new_graph, new_weights, info


NO_FOLDING = ("ConstantFolding",)  # ONNX Runtime's optimizer names, left out when folding grows the weights


def _rewrite(graph, data: bytes, weights: dict, domains: set, disabled: tuple):
    """ONNX Runtime's basic rewrite of the serialised model ``data`` (without the ``disabled`` optimizers):
    (graph, weights, their bytes, the original's bytes, names taken back, disabled) or why not."""
    import onnx
    import onnxruntime as ort

    from .sources import split_weights

    with tempfile.TemporaryDirectory(prefix="dcz-graphopt-") as tmp:
        path = os.path.join(tmp, "basic.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = path
        so.log_severity_level = 3
        try:
            ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(disabled))
            model = onnx.load(path, load_external_data=True)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's and protobuf's own errors
            from dcformat.errors import first_line

            return f"ONNX Runtime could not optimise it ({first_line(e)})"
    extra = _domains(model.graph, set()) - domains - {"", "ai.onnx"}
    if extra:
        return f"ONNX Runtime's rewrite uses operator domains the original does not ({', '.join(sorted(extra))})"
    del model.opset_import[:]
    model.opset_import.extend(graph.opset_import)  # ONNX Runtime lists every domain it knows
    model.ir_version = graph.ir_version
    del model.graph.value_info[:]  # shapes ONNX Runtime inferred: bytes in the file, inferred again at load
    renamed = restore_names(model, set(weights) | _value_names(graph.graph, set()))
    new_graph, new_weights = split_weights(model)
    return new_graph, new_weights, _weight_bytes(new_weights), _weight_bytes(weights), renamed, disabled


def _op_counts(graph) -> dict:
    out: dict = {}
    for g in _graphs(graph):
        for n in g.node:
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def agrees(ref: dict, got: dict) -> tuple[bool, float]:
    """(the rewritten graph's outputs ``got`` match the original's ``ref``, the worst relative L2); outputs as
    converters.calibrate.run_model gives them (name -> list of per-sample arrays) or name -> array."""
    worst = 0.0
    if set(ref) != set(got):
        return False, float("inf")
    for k, a in ref.items():
        a = np.concatenate([np.asarray(x).reshape(-1) for x in a]) if isinstance(a, list) else np.asarray(a)
        b = got[k]
        b = np.concatenate([np.asarray(x).reshape(-1) for x in b]) if isinstance(b, list) else np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, float("inf")
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                return False, float("inf")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a64), np.isnan(b64)):
            return False, float("inf")
        a64, b64 = np.nan_to_num(a64), np.nan_to_num(b64)
        d = float(np.linalg.norm(a64 - b64))
        n = float(np.linalg.norm(a64))
        err = d / n if n > 0 else (0.0 if d == 0 else float("inf"))
        worst = max(worst, err)
    return worst <= AGREE_REL_L2, worst


def describe(info: dict) -> str:
    """One line for dcconvert's notes."""
    removed = ", ".join(f"{n} {op}" for op, n in list(info["removed"].items())[:4])
    nofold = " but constant folding (it would have grown the weights)" if info.get("disabled") else ""
    return (f"graph: ONNX Runtime's basic optimisations{nofold} applied ({info['nodes'][0]} -> {info['nodes'][1]} nodes"
            f"{'; removed ' + removed if removed else ''}; worst output difference {info['agreement']:.1e}); "
            "the file loads without redoing them (--graph-opt none keeps the graph as given)")
