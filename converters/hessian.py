"""Second moments of a layer's inputs, ``H = X.T @ X``, from calibration activations (numpy only).

For every weight that a ``Gemm``, ``MatMul`` or ``Conv`` multiplies with an activation (in the
main graph, an ``If`` branch or a ``Loop`` body: :func:`collect` exposes a subgraph layer's input
through the enclosing nodes, and a layer whose branch never ran gets no H), :func:`layers` says how the weight maps to a ``rows x cols`` matrix (rows =
output neurons, cols = the input features each output sums over) and which activation
feeds it; :func:`accumulate` adds a batch of that activation to ``H`` (one per group for
grouped convolutions, whose outputs see only their group's inputs). A convolution's input
features are its im2col columns (in-channels x kernel positions); image positions count
as samples, subsampled to at most ``max_rows`` per batch so a large feature map costs a
bounded amount. :func:`to_rows` / :func:`from_rows` turn the weight into that matrix and back.

Used by the error-compensating quantizer (converters/obs.py) and for activation-aware
k-means (the diagonal of H: how much each input feature's weights matter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_ROWS_PER_BATCH = 8192  # image positions (conv) or tokens (matmul) of one batch that enter H


@dataclass
class Layer:
    """How a weight is used: ``op`` (Gemm, MatMul or Conv), the activation it multiplies, the layout."""

    weight: str  # record name
    op: str
    activation: str  # the graph value multiplied by the weight
    trans_b: bool = False  # Gemm: W is (out, in) when transB = 1
    group: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begin..., end...
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    path: tuple = ()  # ((node index, attribute name), ...) from the main graph to the If / Loop subgraph of the node
    h: list = field(default_factory=list)  # per group: cols x cols float64
    rows_seen: int = 0

    def cols(self, shape) -> int:
        if self.op == "RNN":  # converters.recurrent: W or R of an LSTM / GRU / RNN, rows x features (per direction)
            return int(shape[-1])
        if self.op == "Conv":
            return int(np.prod(shape[1:]))
        return int(shape[1] if self.trans_b else shape[0])


def records_of(graph) -> dict[str, str]:
    """Main-graph value -> the record it refers to: initializers, and Constant nodes (Paddle2ONNX exports
    hold weights so)."""
    return _scope_records(graph.graph, {})


def _scope_records(g, outer: dict) -> dict[str, str]:
    """Value -> record in graph ``g``: the enclosing scopes' ``outer`` (less the names its inputs shadow),
    its own initializers and Constant nodes."""
    from dcformat.graph import reference

    record = {k: v for k, v in outer.items()}
    for i in g.input:
        record.pop(i.name, None)
    for t in g.initializer:
        r = reference(t)
        if r is not None:
            record[t.name] = r
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and reference(a.t) is not None:
                    record[node.output[0]] = reference(a.t)
    return record


SUBGRAPH_OPS = ("If", "Loop")  # subgraphs whose values converters.recurrent.Lifter can expose for calibration


def layers(graph, weight_names) -> dict[str, Layer]:
    """The layers that multiply an activation by one of ``weight_names`` (records): in the main graph
    and in If branches and Loop bodies (``Layer.path`` says where; their inputs are exposed through
    the enclosing nodes when the H is collected). A weight used by any other node, in any graph,
    keeps plain rounding."""
    wanted = set(weight_names)
    found: dict[str, Layer] = {}
    uses: dict[str, int] = {}

    def walk(g, outer: dict, path: tuple, reachable: bool):
        record = _scope_records(g, outer)
        for idx, node in enumerate(g.node):
            for k, i in enumerate(node.input):
                r = record.get(i)
                if r not in wanted:
                    continue
                uses[r] = uses.get(r, 0) + 1
                if k != 1 or node.op_type not in ("Gemm", "MatMul", "Conv") or not reachable:
                    continue
                attrs = {a.name: a for a in node.attribute}
                if node.op_type == "Gemm":
                    if "transA" in attrs and attrs["transA"].i:
                        continue
                    found[r] = Layer(r, "Gemm", node.input[0], trans_b=bool(attrs["transB"].i) if "transB" in attrs
                                     else False, path=path)
                elif node.op_type == "MatMul":
                    found[r] = Layer(r, "MatMul", node.input[0], path=path)
                else:
                    ints = lambda key: tuple(attrs[key].ints) if key in attrs else ()  # noqa: E731
                    found[r] = Layer(r, "Conv", node.input[0], group=attrs["group"].i if "group" in attrs else 1,
                                     kernel=ints("kernel_shape"), strides=ints("strides"), pads=ints("pads"),
                                     dilations=ints("dilations"),
                                     auto_pad=attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET",
                                     path=path)
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub, record, path + ((idx, a.name),), reachable and node.op_type in SUBGRAPH_OPS)

    walk(graph.graph, {}, (), True)
    # a weight used by another node too (shared, or also added somewhere) keeps plain rounding
    return {r: lay for r, lay in found.items() if uses.get(r) == 1}


def to_rows(w: np.ndarray, layer: Layer) -> list[np.ndarray]:
    """The weight as one ``rows x cols`` float64 matrix per group."""
    w = np.asarray(w, np.float64)
    if layer.op == "RNN":  # [rows, features] or [directions, rows, features], rows in order split into
        # ``group`` equal blocks with an H each: one per direction, or one per row (converters.recurrent)
        return np.split(w.reshape(-1, w.shape[-1]), layer.group, axis=0)
    if layer.op == "Conv":
        m = w.reshape(w.shape[0], -1)
        return np.split(m, layer.group, axis=0)
    if layer.op == "Gemm" and layer.trans_b:
        return [w]
    return [w.T]


def from_rows(parts: list[np.ndarray], like: np.ndarray, layer: Layer) -> np.ndarray:
    """Inverse of :func:`to_rows`, in ``like``'s shape."""
    if layer.op == "RNN":
        return np.concatenate(parts, axis=0).reshape(like.shape)
    if layer.op == "Conv":
        return np.concatenate(parts, axis=0).reshape(like.shape)
    if layer.op == "Gemm" and layer.trans_b:
        return parts[0].reshape(like.shape)
    return parts[0].T.reshape(like.shape)


def _conv_pads(layer: Layer, spatial: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[list[int], list[int]]:
    nd = len(spatial)
    strides = layer.strides or (1,) * nd
    dil = layer.dilations or (1,) * nd
    if layer.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for s, k, st, d in zip(spatial, kernel, strides, dil):
            out = -(-s // st)
            total = max((out - 1) * st + (k - 1) * d + 1 - s, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if layer.auto_pad == "SAME_UPPER" else big)
            end.append(big if layer.auto_pad == "SAME_UPPER" else small)
        return begin, end
    if layer.auto_pad == "VALID" or not layer.pads:
        return [0] * nd, [0] * nd
    return list(layer.pads[:nd]), list(layer.pads[nd:])


def im2col(x: np.ndarray, layer: Layer, kernel: tuple[int, ...], rng: np.random.Generator,
           max_rows: int = MAX_ROWS_PER_BATCH) -> list[np.ndarray]:
    """Per group, (positions x (C/g * prod(kernel))) patches of ``x`` (N x C x spatial...)."""
    return list(patches(x, layer, kernel, rng, max_rows))


def patches(x: np.ndarray, layer: Layer, kernel: tuple[int, ...], rng: np.random.Generator,
            max_rows: int = MAX_ROWS_PER_BATCH) -> np.ndarray:
    """:func:`im2col` as one groups x positions x (C/g * prod(kernel)) float64 array."""
    nd = x.ndim - 2
    strides = layer.strides or (1,) * nd
    dil = layer.dilations or (1,) * nd
    begin, end = _conv_pads(layer, x.shape[2:], kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    # win: N, C, out_positions..., span...; take strides and dilations
    sl = (slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides) + tuple(slice(None, None, d) for d in dil)
    win = win[sl]
    n, c = win.shape[:2]
    out_shape = win.shape[2:2 + nd]
    positions = n * int(np.prod(out_shape))
    cg = c // layer.group
    if positions > max_rows:
        # the sampled positions only, picked from the window view: an early layer of a 640x640 detector has
        # 409,600 positions, 50x the rows kept, and copying them all first cost more than the product
        take = np.sort(rng.choice(positions, max_rows, replace=False))
        at = np.unravel_index(take, (n, *out_shape))
        sel = win[(at[0], slice(None), *at[1:])]  # rows, C, kernel... (the indexed axes come first)
        flat = sel.reshape(take.size, layer.group, -1).transpose(1, 0, 2)  # G, rows, cg x kernel
        return np.ascontiguousarray(flat, np.float64)
    part = win.reshape(n, layer.group, cg, *win.shape[2:])  # N, G, cg, out..., kernel...
    part = np.moveaxis(part, 1, 0)  # G, N, cg, out..., kernel...
    part = np.moveaxis(part, 2, 2 + nd)  # G, N, out..., cg, kernel...
    flat = part.reshape(layer.group, positions, -1)
    return np.asarray(flat, np.float64)


def accumulate(layer: Layer, x: np.ndarray, w_shape: tuple[int, ...], rng: np.random.Generator,
               max_rows: int = MAX_ROWS_PER_BATCH) -> None:
    """Add one batch of the layer's input activation to its H (per group)."""
    x = np.asarray(x)
    if layer.op == "Conv":
        stack = patches(x, layer, tuple(w_shape[2:]), rng, max_rows)  # G x rows x cols
    else:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > max_rows:
            flat = flat[np.sort(rng.choice(flat.shape[0], max_rows, replace=False))]
        stack = np.asarray(flat, np.float64)[None]
    prod = np.matmul(stack.transpose(0, 2, 1), stack)  # one batched product for all groups
    if not layer.h:
        layer.h = list(np.zeros_like(prod))
    for h, p in zip(layer.h, prod):
        h += p
    layer.rows_seen += stack.shape[1]


def importance(layer: Layer, w_shape: tuple[int, ...]) -> np.ndarray:
    """Per weight element, the diagonal of H of its input feature (E[x^2] up to a constant), in
    the weight's own shape: activation-aware k-means weights each weight's error by it."""
    diag = [np.diag(h) for h in layer.h]
    if layer.op == "RNN":
        rows = int(np.prod(w_shape[:-1])) // layer.group
        return np.concatenate([np.broadcast_to(d[None, :], (rows, d.size)) for d in diag]).reshape(w_shape)
    if layer.op == "Conv":
        out_per_group = w_shape[0] // layer.group
        rows = [np.broadcast_to(d, (out_per_group, d.size)) for d in diag]
        return np.concatenate(rows, axis=0).reshape(w_shape)
    d = diag[0]
    if layer.op == "Gemm" and layer.trans_b:
        return np.broadcast_to(d[None, :], w_shape)
    return np.broadcast_to(d[:, None], w_shape)




def collect(graph, weights: dict, calib: dict, decl, found: dict[str, Layer], seed: int = 0,
            max_rows: int = MAX_ROWS_PER_BATCH) -> dict[str, Layer]:
    """Run the original model on every calibration sample, one at a time, and add the inputs of
    the layers in ``found`` to their H (only one sample's activations are held at once). The inputs
    of layers in subgraphs are read from a copy of the model that exposes them through the enclosing
    If / Loop nodes (converters.recurrent.Lifter); a layer in an If branch that did not run gets an
    empty tensor (nothing added), one in a Loop body its iterations stacked."""
    from dcformat import inputs as inp

    from .budget import Runner

    if not found:
        return found
    model, name_of = graph, {}  # (path, activation) -> the value fetched
    if any(lay.path for lay in found.values()):
        import onnx
        from onnx import helper

        from .recurrent import Lifter, _graph_at

        model = onnx.ModelProto()
        model.CopyFrom(graph)
        lifter = Lifter(model)
        for lay in found.values():
            key = (lay.path, lay.activation)
            if lay.path and key not in name_of:
                # copied inside the node's own subgraph, so that it holds a value only where that subgraph ran
                # (an outer value, a main-graph input say, is there whichever If branch runs)
                here = lifter.fresh()
                _graph_at(model, lay.path).node.append(helper.make_node("Identity", [lay.activation], [here]))
                elem = helper.np_dtype_to_tensor_dtype(np.dtype(weights[lay.weight].dtype))
                name_of[key] = lifter.lift(lay.path, here, elem)
    for lay in found.values():
        name_of.setdefault((lay.path, lay.activation), lay.activation)
    acts = sorted(set(name_of.values()))
    runner = Runner(model, weights, extra_outputs=acts)
    rng = np.random.default_rng(seed)
    for i in range(inp.num_samples(calib, decl)):
        outs = runner.session.run(acts, inp.sample_feeds(calib, decl, i))
        for name, y in zip(acts, outs):
            for lay in found.values():
                if name_of[(lay.path, lay.activation)] != name:
                    continue
                x = np.asarray(y)
                if x.size == 0:  # its If branch did not run (or a Loop ran no iteration)
                    continue
                shape = weights[lay.weight].shape
                if lay.op == "Conv" and x.ndim > len(shape):  # stacked by enclosing Loops: one batch of them all
                    x = x.reshape((-1,) + x.shape[x.ndim - len(shape) + 1:])
                accumulate(lay, x, shape, rng, max_rows)
    return found



MAX_H_BYTES = 1 << 30
MIN_ROWS_PER_FEATURE = 4  # calibration rows (samples x positions) per input feature for a usable H  # all layers' H together (float64); the widest layers beyond it keep plain sharing


def for_model(graph, weights: dict, calib: dict, decl, roles: dict, min_size: int, seed: int = 0,
              max_bytes: int = MAX_H_BYTES, reasons: dict | None = None) -> tuple[dict[str, Layer], list[str]]:
    """(layers with a usable H, names of the layers left without) for every compressible weight that
    a Gemm/MatMul/Conv multiplies with an activation, in the main graph or a subgraph (at least
    ``min_size`` elements, at most :data:`converters.obs.MAX_COLUMNS` input features), narrowest first
    within ``max_bytes`` of H, seen in at least MIN_ROWS_PER_FEATURE calibration rows per input feature.

    ``reasons`` (a dict, filled when given): name -> why that layer is left without (too wide, over
    the H memory limit, never reached on the calibration inputs, too few rows)."""
    from .obs import MAX_COLUMNS
    from .roles import COMPRESSIBLE

    why = {} if reasons is None else reasons
    names = [n for n, w in weights.items() if roles.get(n) in COMPRESSIBLE and w is not None and w.size >= max(min_size, 1)
             and w.dtype.kind == "f" and w.dtype.name in ("float32", "float64", "float16") and np.isfinite(w).all()]
    found = layers(graph, names)
    from . import recurrent  # LSTM / GRU / RNN weights, in subgraphs too: their own capture

    rnn, rnn_uses = recurrent.layers(graph, weights, [n for n in names if n not in found])
    found.update(rnn)
    chosen, total = {}, 0
    for name, lay in sorted(found.items(), key=lambda kv: (kv[1].cols(weights[kv[0]].shape), kv[0])):
        shape = weights[name].shape
        cols = lay.cols(shape)  # per group for a convolution (its weight holds C/group inputs per filter)
        cost = lay.group * cols * cols * 8
        if cols > MAX_COLUMNS:
            why[name] = Reason(f"too wide ({cols:,} input features; at most {MAX_COLUMNS:,})", TOO_WIDE)
            continue
        if total + cost > max_bytes:
            why[name] = f"its H would pass the {max_bytes:,}-byte limit of all layers' H"
            continue
        chosen[name] = lay
        total += cost
    collect(graph, weights, calib, decl, {n: lay for n, lay in chosen.items() if lay.op != "RNN"}, seed)
    recurrent.collect(graph, weights, calib, decl, {n: lay for n, lay in chosen.items() if lay.op == "RNN"}, rnn_uses,
                      seed)
    # an H from fewer rows than MIN_ROWS_PER_FEATURE per input feature is mostly noise: compensating
    # against it fits the calibration set and does worse on other inputs than plain rounding
    usable = {}
    for name, lay in chosen.items():
        if not lay.h:  # its node never ran: an If branch (or a Loop body) the calibration inputs did not take
            why[name] = NOT_REACHED
        elif lay.rows_seen < MIN_ROWS_PER_FEATURE * lay.h[0].shape[0]:
            why[name] = Reason(f"saw {lay.rows_seen:,} calibration rows, fewer than {MIN_ROWS_PER_FEATURE} per "
                               f"input feature ({lay.h[0].shape[0]:,})", FEW_ROWS)
        else:
            usable[name] = lay
    return usable, sorted(set(found) - set(usable))


TOO_WIDE, FEW_ROWS = "too wide", "few rows"  # kinds of Reason that dcconvert's note groups (converters/cli.py)


class Reason(str):
    """Why a layer is left without an H: the text, and ``kind`` (TOO_WIDE, FEW_ROWS, or None) for grouping."""

    kind: str | None

    def __new__(cls, text: str, kind: str | None = None):
        self = super().__new__(cls, text)
        self.kind = kind
        return self


NOT_REACHED = "never run on the calibration inputs (an If branch or Loop body they did not take)"


__all__ = ["Layer", "layers", "to_rows", "from_rows", "im2col", "accumulate", "importance", "collect", "for_model",
           "MAX_ROWS_PER_BATCH", "MAX_H_BYTES", "NOT_REACHED"]
