"""Calibration inputs of recurrent layers (ONNX ``LSTM`` / ``GRU`` / ``RNN``), for their ``H`` (numpy only).

A recurrent op computes its gates from two products per time step ``t`` and direction ``d``:
``X[t] @ W[d]^T`` (``W``: ``[dirs, gates*hidden, input]``, input 1) and ``h_{t-1} @ R[d]^T``
(``R``: ``[dirs, gates*hidden, hidden]``, input 2), where ``h_{t-1}`` is the op's own output ``Y``
one step back (``initial_h``, input 5, or zeros at the first step; a reverse direction steps
back from the end). So each row of ``W`` / ``R`` is an output channel (one gate unit) whose
layer error is ``||X (W - Q)^T||``, exactly as for a ``Gemm`` weight, with
``H_W = sum_t X[t]^T X[t]`` and ``H_R = sum_t h_{t-1}^T h_{t-1}``, and the error-compensated
sharing, per-channel scales and the budget's local scan apply unchanged
(:class:`converters.hessian.Layer` with ``op="RNN"``: one group per direction).

Exporters often keep the framework's layout and reorder the gates in the graph (PyTorch's
``i, f, g, o`` sliced and concatenated to ONNX's ``i, o, f, c``; silero-vad does so inside an
``If`` branch): a weight is followed through ``Slice`` / ``Concat`` / ``Unsqueeze`` /
``Squeeze`` / ``Cast`` / ``Identity`` as long as none of them touches its last axis (the input
features), which leaves every row seeing the same ``X`` (or ``h``). The op may sit in ``If``
branches or ``Loop`` bodies: the values it needs are exposed as extra outputs of the enclosing
nodes (the other ``If`` branch gives an empty tensor; a ``Loop`` stacks them per iteration) and
of the graph, in a copy used only for calibration.

Approximations, which the budget's whole-model measurement covers: a ``GRU`` with
``linear_before_reset=0`` multiplies its hidden-gate rows of ``R`` by ``r * h``, not ``h``;
``H_R`` uses ``h`` for all rows. A hidden state that is zero in every calibration row (a
streaming model fed zero states, sequences of length 1) gives ``R`` no usable ``H``: feed the
states a sequential run produces (tools/bench_real_models.py does for silero-vad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OPS = {"LSTM", "GRU", "RNN"}
CARRY = {"Identity", "Cast", "Slice", "Concat", "Unsqueeze", "Squeeze"}  # keep rows whole (checked per node)
EMPTY = "__dcz_empty__"


@dataclass
class Use:
    """One recurrent node consuming a weight as ``kind`` ("W": input 1, or "R": input 2)."""

    kind: str
    path: tuple  # ((node index, attribute name), ...) from the main graph to the node's graph
    x: str  # the node's input X
    y: str  # its output Y ("" when unused: named in the calibration copy)
    h0: str  # initial_h ("" when absent: zeros)
    lens: str  # sequence_lens ("" when absent)
    layout: int
    dirs: int
    reverse: bool  # a single direction that runs backwards
    node_index: int
    direct: bool  # the weight reaches the node unchanged (its axis 0 is the direction)
    op: str = "LSTM"
    gates: tuple = ()  # LSTM with default activations: its W, R, B, initial_c inputs ("" absent), for the gates'
    # sensitivities (lstm_sensitivity); () otherwise
    names: dict = field(default_factory=dict)  # value -> exposed graph output (set by expose())


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _ints(scope_consts: dict, name: str, node, attr: str):
    """A node's integer list given as an attribute (older opsets) or as a constant input."""
    a = _attr(node, attr)
    if a is not None:
        return list(a.ints)
    v = scope_consts.get(name) if name else None
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def _keeps_last_axis(node, k: int, ndim: int, consts: dict) -> int | None:
    """The output rank when ``node`` (a CARRY op, weight at input ``k``) leaves the weight's last axis
    whole and last; None when it may not."""
    op = node.op_type
    if op in ("Identity", "Cast"):
        return ndim
    if op == "Concat":
        a = _attr(node, "axis")
        axis = a.i if a is not None else 0
        return ndim if (axis % ndim) != ndim - 1 else None
    if op == "Slice":
        if k != 0:
            return None
        starts = _ints(consts, node.input[1] if len(node.input) > 1 else "", node, "starts")
        axes = _ints(consts, node.input[3] if len(node.input) > 3 else "", node, "axes")
        if starts is None:
            return None
        if axes is None:
            if len(node.input) > 3 and node.input[3]:
                return None  # axes not a constant: cannot tell
            axes = list(range(len(starts)))
        return ndim if all((a % ndim) != ndim - 1 for a in axes) else None
    if op in ("Unsqueeze", "Squeeze"):
        if k != 0:
            return None
        axes = _ints(consts, node.input[1] if len(node.input) > 1 else "", node, "axes")
        if axes is None:
            return None
        if op == "Unsqueeze":
            out = ndim + len(axes)
            return out if all((a % out) != out - 1 for a in axes) else None
        return ndim - len(axes) if all((a % ndim) != ndim - 1 for a in axes) else None
    return None


def find(model, weights: dict, names) -> tuple[dict, set]:
    """({record: [Use, ...]} for every record in ``names`` that reaches only recurrent nodes' W / R
    inputs, through layout operators that keep its rows whole; set of records that reach a
    recurrent node some other way (a shared, reshaped or transposed weight: no H))."""
    from onnx import numpy_helper

    from dcformat.graph import reference

    wanted = set(names)
    uses: dict[str, list[Use]] = {}
    refused: set[str] = set()
    other: set[str] = set()  # records consumed by a non-recurrent, non-carrying node

    def value_of(t):
        r = reference(t)
        if r is not None:
            return weights.get(r)
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - an odd tensor: not a constant we can use
            return None

    def walk(g, outer_carry: dict, outer_consts: dict, path: tuple):
        carry = dict(outer_carry)  # value -> [(record, ndim, direct)]
        consts = dict(outer_consts)  # value -> small integer arrays (Slice/Unsqueeze arguments)
        for i in g.input:
            carry.pop(i.name, None)
            consts.pop(i.name, None)
        for t in g.initializer:
            r = reference(t)
            carry[t.name] = [(r, len(t.dims), True)] if r in wanted else []
            if t.data_type in (6, 7) and np.prod(t.dims, dtype=np.int64) <= 64:  # int32 / int64
                consts[t.name] = value_of(t)
        for idx, node in enumerate(g.node):
            if node.op_type == "Constant":
                v = _attr(node, "value")
                r = reference(v.t) if v is not None and v.HasField("t") else None
                for o in node.output:
                    carry[o] = [(r, len(v.t.dims), True)] if r in wanted else []
                    if v is not None and v.HasField("t") and v.t.data_type in (6, 7):
                        consts[o] = value_of(v.t)
                continue
            ins = [carry.get(i, []) if i else [] for i in node.input]
            out_carry = []
            if node.op_type in OPS:
                for k, src in enumerate(ins):
                    for r, ndim, direct in src:
                        if k not in (1, 2):
                            refused.add(r)
                            continue
                        dirs_attr = _attr(node, "direction")
                        direction = dirs_attr.s.decode() if dirs_attr is not None else "forward"
                        lay = _attr(node, "layout")
                        get = lambda j: node.input[j] if len(node.input) > j else ""  # noqa: E731
                        plain = node.op_type == "LSTM" and not any(
                            _attr(node, a) is not None for a in ("activations", "clip", "activation_alpha",
                                                                 "activation_beta")) and not (
                            _attr(node, "input_forget") is not None and _attr(node, "input_forget").i) and not get(7)
                        use = Use("W" if k == 1 else "R", path, get(0), node.output[0] if node.output else "", get(5),
                                  get(4), lay.i if lay is not None else 0, 2 if direction == "bidirectional" else 1,
                                  direction == "reverse", idx, direct and ndim == 3, node.op_type,
                                  (get(1), get(2), get(3), get(6)) if plain and get(3) else ())
                        if use.kind == "R" and use.dirs > 1 and not use.direct:
                            refused.add(r)  # which direction's h its rows see cannot be told
                        elif not any((u.path, u.node_index, u.kind) == (path, idx, use.kind) for u in uses.get(r, [])):
                            uses.setdefault(r, []).append(use)  # once per node (pieces of one weight: same rows)
            elif node.op_type in CARRY:
                for k, src in enumerate(ins):
                    for r, ndim, direct in src:
                        out = _keeps_last_axis(node, k, ndim, consts)
                        if out is None:
                            refused.add(r)
                        else:
                            keep = direct and node.op_type in ("Identity", "Cast")
                            out_carry.append((r, out, keep))
            else:
                for src in ins:
                    for r, _, _ in src:
                        other.add(r)
            for o in node.output:
                carry[o] = out_carry
                consts.pop(o, None)
            for a in node.attribute:
                subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
                for sub in subs:
                    walk(sub, carry, consts, path + ((idx, a.name),))

    walk(model.graph, {}, {}, ())
    bad = refused | other
    return {r: us for r, us in uses.items() if r not in bad}, bad & set(uses)


def _graph_at(model, path: tuple):
    g = model.graph
    for idx, name in path:
        node = g.node[idx]
        g = next(a for a in node.attribute if a.name == name).g
    return g


class Lifter:
    """Values of subgraphs made outputs of ``model``'s main graph, in place (``model`` is a calibration
    copy): through every enclosing ``If`` (the other branch gives an empty tensor) and ``Loop``
    (stacked per iteration: a leading axis). :meth:`lift` raises ValueError for other enclosing ops."""

    def __init__(self, model):
        self.model = model
        self.made: dict[tuple, str] = {}
        self.outputs: list[str] = []  # the new graph outputs
        self.counter = 0

    def fresh(self) -> str:
        self.counter += 1
        return f"__dcz_rnn_{self.counter}"

    def lift(self, path: tuple, value: str, elem_type: int) -> str:
        """The name of ``value`` (a value of the graph at ``path``) in the main graph."""
        from onnx import helper, numpy_helper

        model, made = self.model, self.made
        key = (path, value)
        if key in made:
            return made[key]
        if not path:
            made[key] = value
            if value in {i.name for i in model.graph.input}:  # fed, not fetched (collect() reads the feeds)
                return value
            if value not in self.outputs and value not in {o.name for o in model.graph.output}:
                model.graph.output.append(helper.make_empty_tensor_value_info(value))
                self.outputs.append(value)
            return value
        parent = _graph_at(model, path[:-1])
        idx, attr = path[-1]
        node = parent.node[idx]
        sub = _graph_at(model, path)
        if value not in ({o for n in sub.node for o in n.output} | {t.name for t in sub.initializer}
                         | {i.name for i in sub.input}):  # an outer scope's value: lift it there
            made[key] = self.lift(path[:-1], value, elem_type)
            return made[key]
        if node.op_type not in ("If", "Loop"):
            raise ValueError(f"a layer inside a {node.op_type} node")
        copy = self.fresh()  # a new name: a subgraph may not output a value twice, nor an outer value directly
        sub.node.append(helper.make_node("Identity", [value], [copy]))
        if node.op_type == "If":
            other = "else_branch" if attr == "then_branch" else "then_branch"
            og = next(a for a in node.attribute if a.name == other).g
            sub.output.append(helper.make_empty_tensor_value_info(copy))
            empty = self.fresh()
            og.node.append(helper.make_node("Constant", [], [empty], value=numpy_helper.from_array(
                np.zeros(0, helper.tensor_dtype_to_np_dtype(elem_type)))))
            og.output.append(helper.make_empty_tensor_value_info(empty))
        else:
            sub.output.append(helper.make_empty_tensor_value_info(copy))  # a Loop's new scan output, stacked
        out = self.fresh()
        node.output.append(out)
        made[key] = self.lift(path[:-1], out, elem_type)
        return made[key]


def expose(model, uses: list[Use], dtype) -> list[str]:
    """Make every value the ``uses`` need (X, Y, initial_h, sequence_lens) an output of ``model``'s
    main graph, in place (``model`` is a calibration copy), by :class:`Lifter`. Sets each use's
    ``names``; returns the new graph outputs. Raises ValueError for other enclosing ops."""
    from onnx import helper

    lifter = Lifter(model)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for use in uses:
        g = _graph_at(model, use.path)
        node = g.node[use.node_index]
        if not use.y:
            use.y = lifter.fresh()
            node.output[0] = use.y
        use.names = {v: lifter.lift(use.path, v, elem if v != use.lens else 6)
                     for v in (use.x, use.y, use.h0, use.lens, *use.gates) if v}
    return lifter.outputs


def _stacked(a: np.ndarray, ndim: int) -> list[np.ndarray]:
    """The per-iteration arrays of a value stacked by enclosing Loops (``ndim``: its own rank)."""
    a = np.asarray(a)
    if a.ndim <= ndim:
        return [a]
    return list(a.reshape((-1,) + a.shape[a.ndim - ndim:]))


def _sig(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def lstm_sensitivity(x, prev, c0, w, r, b, back: bool) -> np.ndarray:
    """Per step and gate row (ONNX order i, o, f, c), the squared sensitivity of the cell's outputs
    (h and c) to that gate's pre-activation, for one direction of an LSTM with default activations:
    ``x`` [seq, batch, in], ``prev`` (h_{t-1}) [seq, batch, hidden], ``c0`` [batch, hidden], ``w``/``r``
    the op's [4h, in] / [4h, hidden], ``b`` [8h]. A saturated gate (sigmoid' or tanh' near 0) or a
    gate whose product is zero (f with c_{t-1} = 0) gets ~0: errors of its row hardly move the output."""
    hidden = r.shape[-1]
    pre = x @ w.T + prev @ r.T + b[: 4 * hidden] + b[4 * hidden:]  # seq x batch x 4h
    i, o, f, g = (pre[..., k * hidden:(k + 1) * hidden] for k in range(4))
    si, so, sf, tg = _sig(i), _sig(o), _sig(f), np.tanh(g)
    c_prev = np.zeros_like(si)
    c = np.asarray(c0, np.float64)
    for t in (range(pre.shape[0] - 1, -1, -1) if back else range(pre.shape[0])):
        c_prev[t] = c
        c = sf[t] * c + si[t] * tg[t]
    cn = sf * c_prev + si * tg
    tc = np.tanh(cn)
    through = 1.0 + (so * (1.0 - tc * tc)) ** 2  # a change of c moves c itself and h = o tanh(c)
    s2 = np.concatenate([(si * (1 - si) * tg) ** 2 * through, (so * (1 - so) * tc) ** 2,
                         (sf * (1 - sf) * c_prev) ** 2 * through, ((1 - tg * tg) * si) ** 2 * through], axis=-1)
    return s2


def rows(use: Use, got: dict, sensitivity: bool = False):
    """(per direction, the rows its W sees; per direction, the rows its R sees) of one run: ``got``
    maps the use's values to their arrays (empty where the branch did not run). With ``sensitivity``
    (an LSTM use with ``gates``), also per direction the rows' squared gate sensitivities
    (:func:`lstm_sensitivity`, rows x 4h in the op's row order) as a third item."""
    x_all, y_all = got.get(use.x), got.get(use.y)
    if x_all is None or y_all is None or np.asarray(y_all).size == 0:  # the node's If branch did not run
        return ([], [], []) if sensitivity else ([], [])
    xs = _stacked(x_all, 3)
    ys = _stacked(y_all, 4)
    h0s = _stacked(got[use.h0], 3) if use.h0 else [None] * len(xs)
    lens_all = _stacked(got[use.lens], 1) if use.lens else [None] * len(xs)
    w_rows, r_rows = [[] for _ in range(use.dirs)], [[] for _ in range(use.dirs)]
    s_rows = [[] for _ in range(use.dirs)]
    if sensitivity:
        gw, gr, gb = (np.asarray(got[v], np.float64) for v in use.gates[:3])
        c0s = _stacked(got[use.gates[3]], 3) if use.gates[3] else [None] * len(xs)
    for k, (x, y, h0, lens) in enumerate(zip(xs, ys, h0s, lens_all)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if use.layout == 1:  # batch first: X [batch, seq, in], Y [batch, seq, dirs, hidden], h0 [batch, dirs, hidden]
            x, y = x.transpose(1, 0, 2), y.transpose(1, 2, 0, 3)
            h0 = None if h0 is None else np.asarray(h0).transpose(1, 0, 2)
        seq, batch = x.shape[0], x.shape[1]
        hidden = y.shape[-1]
        h0 = np.zeros((use.dirs, batch, hidden)) if h0 is None else np.asarray(h0, np.float64)
        n = np.full(batch, seq, np.int64) if lens is None else np.minimum(np.asarray(lens, np.int64).reshape(-1), seq)
        t = np.arange(seq)[:, None]
        live = t < n[None, :]  # seq x batch
        for d in range(use.dirs):
            w_rows[d].append(x[live])
            if d == 1 or use.reverse:  # steps back from the end: h before t is Y[t+1], initial_h at the last step
                nxt = np.concatenate([y[1:, d], np.zeros((1, batch, hidden))], axis=0)
                prev = np.where((t == n[None, :] - 1)[..., None], h0[d][None], nxt)
            else:
                prev = np.concatenate([h0[d][None], y[:-1, d]], axis=0)
            r_rows[d].append(prev[live])
            if sensitivity:
                c0 = c0s[k]
                c0 = np.zeros((batch, hidden)) if c0 is None else np.asarray(c0, np.float64)
                if use.layout == 1 and c0.ndim == 3:
                    c0 = c0.transpose(1, 0, 2)
                c0 = c0[d] if c0.ndim == 3 else c0
                s2 = lstm_sensitivity(x, prev, c0, gw[d], gr[d], gb[d], d == 1 or use.reverse)
                s_rows[d].append(s2[live])
    out = ([np.concatenate(r) for r in w_rows], [np.concatenate(r) for r in r_rows])
    return out + ([np.concatenate(r) for r in s_rows],) if sensitivity else out


def layers(model, weights: dict, names) -> tuple[dict, dict]:
    """({record: converters.hessian.Layer (op "RNN", no H yet)}, {record: [Use]}) for the weights in
    ``names`` that recurrent nodes use as W or R (:func:`find`), at most one kind per weight."""
    from .hessian import Layer

    found, _ = find(model, weights, names)
    out, out_uses = {}, {}
    for r, us in found.items():
        kinds = {u.kind for u in us}
        w = weights.get(r)
        if len(kinds) != 1 or w is None or w.ndim not in (2, 3):
            continue
        direct = {u.direct for u in us}
        dirs = {u.dirs for u in us}
        if len(direct) != 1 or len(dirs) != 1:
            continue
        group = us[0].dirs if us[0].direct else 1
        if us[0].direct and w.shape[0] != group:
            continue
        if not us[0].direct and w.ndim == 3 and w.shape[0] != 1:
            continue
        out[r] = Layer(r, "RNN", f"{us[0].kind} of {len(us)} recurrent node(s)", group=group)
        out_uses[r] = us
    return out, out_uses


def add_rows(layer, parts: list[np.ndarray], rng: np.random.Generator, max_rows: int) -> None:
    """Add one run's rows (one array per group; all-zero rows dropped: they carry nothing) to H."""
    if not layer.h:
        layer.h = [np.zeros((p.shape[1], p.shape[1])) for p in parts]
    counted = 0
    for g, p in enumerate(parts):
        p = p[np.any(p != 0, axis=1)]
        if p.shape[0] > max_rows:
            p = p[np.sort(rng.choice(p.shape[0], max_rows, replace=False))]
        layer.h[g] += p.T @ p
        counted = max(counted, p.shape[0])
    layer.rows_seen += counted


def collect(model, weights: dict, calib: dict, decl, found: dict, uses: dict, seed: int = 0,
            max_rows: int = 8192) -> dict:
    """Run the original model (a copy with the recurrent nodes' values exposed) on every calibration
    sample and add each recurrent weight's rows (X for W, h_{t-1} for R) to its H."""
    import onnx

    from dcformat import inputs as inp

    from .budget import Runner

    if not found:
        return found
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    every = [u for r in found for u in uses[r]]
    dtype = next(iter(weights[r].dtype for r in found))
    # one exposure per (subgraph, value): several weights of one node share it
    by_node: dict[tuple, Use] = {}
    for u in every:
        by_node.setdefault((u.path, u.node_index), u)
    expose(copy, list(by_node.values()), dtype)
    for u in every:
        u.names = by_node[(u.path, u.node_index)].names
        u.y = by_node[(u.path, u.node_index)].y
    fed = {i.name for i in copy.graph.input}
    wanted = sorted({n for u in every for n in u.names.values()} - fed)
    runner = Runner(copy, weights, extra_outputs=wanted)
    rng = np.random.default_rng(seed)
    weighted = {r: None for r in found if SENSITIVITY and all(u.gates and not u.lens for u in uses[r])
                and weights[r][..., 0].size * weights[r].shape[-1] ** 2 * 8 <= PER_ROW_BYTES}
    maps: dict[tuple, list | None] = {}  # (record, use) -> per direction, the record's flat row of each op row
    for i in range(inp.num_samples(calib, decl)):
        feeds = inp.sample_feeds(calib, decl, i)
        outs = dict(zip(wanted, runner.session.run(wanted, feeds)))
        outs.update({k: v for k, v in feeds.items() if k in fed})
        for r, lay in found.items():
            for j, u in enumerate(uses[r]):
                got = {v: outs[n] for v, n in u.names.items()}
                sens = r in weighted
                res = rows(u, got, sensitivity=sens)
                if not res[0]:
                    continue
                parts = res[0] if u.kind == "W" else res[1]
                add_rows(lay, parts[:1] if lay.group == 1 else parts, rng, max_rows)
                if not sens:
                    continue
                if (r, j) not in maps:
                    maps[r, j] = row_map(weights[r], np.asarray(got[u.gates[0 if u.kind == "W" else 1]]), u)
                if maps[r, j] is None:  # the op's rows cannot be told apart in the record: plain H
                    weighted.pop(r, None)
                    continue
                if weighted[r] is None:
                    weighted[r] = []
                for d, (p, s2) in enumerate(zip(parts, res[2])):
                    weighted[r].append((maps[r, j][d], p, s2))  # rows kept: summed once at the end
    for r, pieces in weighted.items():
        if pieces and found[r].h:
            _per_row(found[r], _weighted_h(pieces, weights[r][..., 0].size, rng, max_rows))
    return found


def _weighted_h(pieces: list, rows_n: int, rng, max_rows: int, block: int = 32) -> np.ndarray:
    """sum over calibration rows n of s2[n, r] x_n x_n^T for every record row r (``pieces``: (record rows
    of the op rows, X rows, s2 rows)), at most ``max_rows`` rows per record row block, by matrix products."""
    hs = None
    for rmap in {id(m): m for m, _, _ in pieces}.values():
        xs = np.concatenate([p for m, p, _ in pieces if m is rmap])
        ss = np.concatenate([s2 for m, _, s2 in pieces if m is rmap])
        if xs.shape[0] > max_rows:
            take = np.sort(rng.choice(xs.shape[0], max_rows, replace=False))
            xs, ss = xs[take], ss[take] * (xs.shape[0] / max_rows)
        if hs is None:
            hs = np.zeros((rows_n, xs.shape[1], xs.shape[1]))
        for b0 in range(0, ss.shape[1], block):
            sw = np.sqrt(ss[:, b0:b0 + block]).T[:, :, None] * xs[None]  # block x n x features
            hs[rmap[b0:b0 + block]] += np.matmul(sw.transpose(0, 2, 1), sw)
    return hs


SENSITIVITY = False  # True: LSTM rows get an H weighted by their gates' sensitivities (lstm_sensitivity). Off by
# default: on Silero VAD it made the scan's predictions right (W at 8 bits per channel: predicted 0.0009, was
# 0.0114) but the plan and the file came out the same (583,952 vs 575,904 B) at many times the conversion time
PER_ROW_BYTES = 256 << 20  # one H per row only while they fit in this (else one per direction)
SENSITIVITY_FLOOR = 0.01  # of a row's share of the plain H kept: rows saturated on the calibration set still count


def row_map(record: np.ndarray, op: np.ndarray, use: Use) -> list | None:
    """Per direction, the flat row of ``record`` behind each row of the op's W or R ``op`` [dirs, rows,
    features], or None where rows are repeated or missing (an ambiguous or partial reordering)."""
    rows_n = op.shape[1]
    if use.direct:
        return [d * rows_n + np.arange(rows_n) for d in range(op.shape[0])]
    if op.shape[0] != 1:
        return None
    flat = np.ascontiguousarray(record.reshape(-1, record.shape[-1]))
    where = {row.tobytes(): k for k, row in enumerate(flat)}
    if len(where) != flat.shape[0] or flat.shape[0] != rows_n:
        return None
    opr = np.ascontiguousarray(op[0].astype(record.dtype))
    got = [where.get(row.tobytes()) for row in opr]
    if any(g is None for g in got) or len(set(got)) != rows_n:
        return None
    return [np.asarray(got)]


def _per_row(layer, hs: np.ndarray) -> None:
    """Turn ``layer`` (one H per direction) into one H per row: the sensitivity-weighted ``hs`` plus
    SENSITIVITY_FLOOR of the row's share of its direction's plain H."""
    per_dir = hs.shape[0] // len(layer.h)
    plain = np.repeat(np.stack(layer.h), per_dir, axis=0)
    tw = np.einsum("rii->", hs) / hs.shape[0]
    tp = np.einsum("rii->", plain) / plain.shape[0]
    if not tw > 0 or not tp > 0:
        return
    layer.h = list(hs + SENSITIVITY_FLOOR * (tw / tp) * plain)
    layer.group = hs.shape[0]


__all__ = ["Use", "Lifter", "find", "expose", "rows", "layers", "collect", "add_rows", "OPS"]
