"""Running .dcz models: rebuild the ONNX model and hand it to ONNX Runtime. No torch.

Full mode gives every weight back as the array the converter decided on. Compact mode keeps
codebook-coded weights as uint8 indices plus their codebook, with a Gather (or, for a
uniform codebook, a DequantizeLinear) that rebuilds the weight when the model runs: the
model held in memory is about 4x smaller and the rebuilt weights are the same bit for bit.
A float32 record with per-channel scales (format 1.2) is rebuilt by the Gather, then a Mul by
the scales (a broadcast initializer) and, where some product is -0.0, an Add of 0.0: exactly
spec 7.5's arithmetic, which ONNX Runtime's float32 Mul and Add compute bit for bit.
The outputs are not always bit-identical to full mode: ONNX Runtime pre-packs constant
Gemm/MatMul weights (and lays out constant Conv weights as NCHWc at ORT_ENABLE_ALL), which
changes the summation order; a weight computed in the graph takes the plain kernels. With
``session.disable_prepacking`` and ORT_ENABLE_EXTENDED both modes give identical outputs;
with the defaults they agree to float rounding. Rebuilding costs time at every run.

For a session, weights are not copied into a serialized model: the graph (small) is handed
to ONNX Runtime with the decoded arrays as external initializers, used in place.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass, field

import numpy as np

from .constants import DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE
from .decode import split_parts
from .errors import DczError, FormatError, TensorError, first_line
from .onnxproto import DEFAULT, EXTERNAL, ONNX_DTYPE_NAMES, np_dtype_to_onnx
from .reader import DczReader
from .reader import open as open_dcz


class ProviderError(DczError):
    """An execution provider that was asked for is not available."""


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_PACKAGES = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu"}
COMPACT_MIN_ELEMENTS = 1024  # smaller tensors stay dense in compact mode: a Gather would cost more than it saves
COMPACT_SUFFIX_INDEX = "::dcz_index"
COMPACT_SUFFIX_CODEBOOK = "::dcz_codebook"
COMPACT_SUFFIX_SCALES = "::dcz_scales"


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the duration (unless it is off already), then on again.

    A load makes thousands of small objects that live until it returns (the header's records, the graph's
    protobuf wrappers, the plan); the collector runs each 700 new ones: 5-6 runs per session of a 300-record
    PP-OCR or Silero file, each over every young object still alive, every tenth run also over the older
    generation and every hundredth over every object of the process (tools/bench_load_stages.py: the *gc*
    column). Paused, it runs at most once after the load (its count of new objects is past 700), over the
    few still alive by then: a load leaves no cycles (gc.collect() finds nothing after a session of any of
    the benchmark files), so nothing waits longer to be freed. The collector is a process-wide switch: a
    thread that turns it off meanwhile finds it on again when the first load to pause it returns."""
    import gc

    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _reader(src) -> tuple[DczReader, bool]:
    if isinstance(src, DczReader):
        return src, False
    return open_dcz(src), True


@dataclass
class Indexed:
    """A codebook-coded tensor as compact mode keeps it: ``values[indices]``, times ``scales`` along
    ``axis`` for a record with per-channel scales (spec 7.5).

    ``values`` is in the tensor's dtype (float32, unscaled, when scaled), sorted ascending; for
    codebook-sparse one entry is the zero. ``indices`` are uint8, in the tensor's shape.
    """

    values: np.ndarray
    indices: np.ndarray
    scales: np.ndarray | None = None  # float32, shape [1, .., C, .., 1]: broadcasts along ``axis``
    axis: int | None = None

    def __iter__(self):  # (values, indices), as decode_indices gave before scales existed
        if self.scales is not None:
            raise TypeError("a tensor with per-channel scales is not values[indices]: use .rebuild()")
        return iter((self.values, self.indices))

    @property
    def needs_plus_zero(self) -> bool:
        """Whether some product is -0.0, which spec 7.5 makes +0.0 (compact mode then adds 0.0)."""
        if self.scales is None:
            return False
        with np.errstate(over="ignore", invalid="ignore"):
            p = self.scales.reshape(-1, 1) * self.values.reshape(1, -1)
        return bool(np.any((p == 0) & np.signbit(p)))

    def rebuild(self) -> np.ndarray:
        """The tensor, computed as compact mode's ONNX graph computes it: Gather, then (scaled) Mul by the
        scales and Add 0.0 in float32 -- which is spec 7.5's arithmetic."""
        g = self.values[self.indices]
        if self.scales is None:
            return g
        with np.errstate(over="ignore", invalid="ignore"):
            out = g * self.scales
            return out + np.float32(0.0) if self.needs_plus_zero else out


def decode_indices(reader: DczReader, name: str) -> Indexed | None:
    """The values, uint8 indices (and per-channel scales) of a codebook-coded tensor, as an :class:`Indexed`:
    the tensor is ``.rebuild()``, ``values[indices]`` when not scaled.

    None when the tensor is not codebook-coded or needs more than 256 values, or has per-channel scales
    and a dtype other than float32 (compact mode rebuilds those in float32 only).
    """
    from . import kernels
    from .decode import _values, read_scales
    from .streams import parse_stream, raise_lane_error

    info = reader.info(name)
    if info.encoding not in (ENC_CB_DENSE, ENC_CB_SPARSE) or info.index_alphabet > 256 or info.numel == 0:
        return None
    if info.scaled and info.dtype != "float32":
        return None
    sec = reader._section_bytes(reader._tensor_sections[name], f"tensor {name!r}")
    where = f"tensor {name!r}"
    parts = split_parts(info, sec, where)
    offs = {k: info.offset + v for k, v in info.part_offsets().items()}
    n = info.numel
    sparse = info.encoding == ENC_CB_SPARSE
    scales = read_scales(info, parts["scales"], where, offs["scales"]) if info.scaled else None
    values = _values(info, parts["codebook"], sparse).view(DTYPES[info.dtype])
    # indices refer to the values sorted ascending, so that a uniform codebook is a plain
    # (q - zero_point) * scale whatever order the file lists it in (codebook-sparse puts the zero first)
    order = np.argsort(values, kind="stable")
    table = np.empty(values.size, np.uint8)
    table[order] = np.arange(values.size, dtype=np.uint8)
    values = values[order]
    if not sparse:
        s = parse_stream(parts["indices"], n, info.index_alphabet, info.lane_size, where, offs["indices"])
        out = np.empty(n, np.uint8)
        raise_lane_error(kernels.pick(kernels.decode_dense, kernels.decode_dense_serial, n)(s.payload, s.lane_offsets, s.table, s.table_bits, n, info.lane_size,
                                              table, out), where, (("index", s),))
    else:
        m = info.entries
        g = parse_stream(parts["gaps"], m, 1 << info.gap_bits, info.lane_size, where, offs["gaps"])
        s = parse_stream(parts["indices"], m, info.index_alphabet, info.lane_size, where, offs["indices"])
        bases = parts["lane_bases"].view("<u8")
        if bases.size and (bases[0] != 0 or int(bases.max()) > n):
            reader[name]  # raises the reader's own, precise error
        out = np.full(n, table[0], np.uint8)  # positions not stored hold the zero (symbol 0)
        if m:
            raise_lane_error(kernels.pick(kernels.decode_sparse, kernels.decode_sparse_serial, m)(
                g.payload, g.lane_offsets, g.table, g.table_bits, s.payload, s.lane_offsets, s.table, s.table_bits,
                m, info.lane_size, bases.astype(np.int64), n, table, out), where, (("gap", g), ("index", s)))
    got = Indexed(values, out.reshape(info.shape))
    if scales is not None:
        shape = [1] * len(info.shape)
        shape[info.scale_axis] = -1
        got.scales, got.axis = scales.reshape(shape), info.scale_axis
        found = int(np.count_nonzero(got.rebuild()))
    else:
        zeros = np.flatnonzero(values == 0)  # +0.0 and -0.0 (sorted: adjacent)
        found = n - sum(int(np.count_nonzero(out == z)) for z in zeros)  # no bincount: it copies to intp
    if found != info.nonzeros:
        raise FormatError(f"{where}: decodes to {found} non-zero elements, the record declares {info.nonzeros}")
    return got


def _uniform(values: np.ndarray) -> tuple[np.float32, np.uint8] | None:
    """(scale, zero_point) if float32 ``values`` == (arange(k) - zp) * scale exactly, as ORT computes it."""
    if values.dtype != np.float32 or values.size < 2:
        return None
    order_ok = np.all(np.diff(values) > 0)
    if not order_ok:
        return None
    scale = np.float32(values[1] - values[0])
    if not np.isfinite(scale) or scale <= 0:
        return None
    zp = -values[0] / scale
    if not np.isclose(zp, round(float(zp))) or not 0 <= round(float(zp)) <= 255:
        return None
    zp = np.uint8(round(float(zp)))
    q = np.arange(values.size, dtype=np.int32)
    rebuilt = ((q - np.int32(zp)).astype(np.float32) * scale).astype(np.float32)
    return (scale, zp) if np.array_equal(rebuilt.view(np.uint32), values.view(np.uint32)) else None


@dataclass
class Prepared:
    """A graph ready for ONNX Runtime plus the arrays it takes as external initializers."""

    model: object  # onnx.ModelProto without the external initializers' data
    external: dict[str, np.ndarray] = field(default_factory=dict)
    compacted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # codebook-coded tensors compact mode keeps full size: why


COMPACT_MAX_VALUES = 256  # uint8 indices


def _not_compactable(info, placed: bool, nrefs: int, is_input: bool, opset: int) -> str:
    """Why compact mode keeps a codebook-coded tensor full size ('' if it need not)."""
    if info.numel < COMPACT_MIN_ELEMENTS:
        return f"fewer than {COMPACT_MIN_ELEMENTS} elements"
    if nrefs > 1:
        return f"used in {nrefs} places"
    if not placed:
        return "inside a subgraph"
    if is_input:
        return "also a graph input"
    if opset < 6:  # Cast's 'to' is an int attribute from opset 6 on
        return f"opset {opset} < 6"
    return ""


def prepare(src, compact: bool = False, external: bool = True, hoist: bool = False, on_graph=None) -> Prepared:
    """Decode a .dcz into a ModelProto; large weights stay aside as arrays when ``external``.

    With ``hoist`` (and ``external``) a large weight made by a Constant node inside a subgraph (an If
    branch ...) is made by a main-graph initializer of the same name instead, which the subgraph reads
    from the outer scope, so that it too is handed over in place rather than serialized into the graph;
    only where that name is defined nowhere else and used only inside that subgraph
    (:func:`dcformat.graph.hoistable`). ONNX Runtime then computes the same outputs (tests/test_fastload.py).

    One walk of the graph: the reader's check of its references (:meth:`DczReader._graph_refs`)
    lists them, and they are filled in from that list; the records are read and decoded together
    (:meth:`DczReader.decode_many`). Without ``compact`` the onnx package is not imported.

    ``on_graph``, if given, is called with the parsed and checked graph (an onnx.ModelProto) before anything
    in it is changed: what a caller that also wants to read the graph (dcrun: its declared inputs) looks at,
    without parsing it a second time.
    """
    with gc_paused():
        return _prepare(src, compact, external, hoist, on_graph)


def _prepare(src, compact: bool, external: bool, hoist: bool, on_graph) -> Prepared:
    reader, owned = _reader(src)
    try:
        holders = None
        if external and hoist:
            from .graph import Holders

            holders = Holders()  # the walk also notes the subgraphs' scopes, for _hoistable
        used = set() if external else None  # ONNX Runtime drops an initializer nothing uses, then refuses its data
        got = reader._graph_refs(holders, used)
        if got is None:
            raise FormatError(f"{reader.path}: weights-only file (no graph section); use load_weights() instead")
        model, scanned = got
        if on_graph is not None:
            on_graph(model)
        out = Prepared(model)
        main = {t.name: t for t in model.graph.initializer}
        refs: dict[str, list] = {}
        held = {}  # record name -> (subgraph, its Constant node) holding a reference to it
        for i, (t, name, node, _) in enumerate(scanned):
            refs.setdefault(name, []).append((t, node))
            if holders and i in holders:
                held[name] = holders[i]
        new_nodes, removed, removed_nodes = [], set(), set()
        graph_inputs = {i.name for i in model.graph.input}
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        graph_outputs = {o.name for o in model.graph.output}
        if used is not None:
            used |= graph_outputs
        tensors = reader.tensors
        plan = []  # (record name, its protos, in_main, Constant node or None, record)
        for name, protos in refs.items():
            info = tensors.get(name)
            if info is None:
                raise FormatError(f"graph: a tensor refers to {name!r}, which the file does not hold")
            proto, node = protos[0]
            in_main = len(protos) == 1 and main.get(proto.name) is proto
            # a main-graph Constant node whose value is the record can become an initializer; only a large float
            # record's (handed over in place) or, in compact mode, any record's node is looked at
            if not (len(protos) == 1 and not in_main and node is not None
                    and (compact or (external and info.dtype in _ORT_FLOATS and info.decoded_nbytes >= EXTERNAL_MIN_BYTES))
                    and node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value"
                    and node.output and node.output[0] and node.output[0] not in graph_outputs):
                node = None
            shape = info.shape
            for t, _ in protos:  # arrays handed to ORT as external initializers are not checked elsewhere
                if ONNX_DTYPE_NAMES.get(t.data_type) != info.dtype or tuple(t.dims) != shape:
                    raise TensorError(f"graph: tensor {t.name!r} expects {_np_dtype(t.data_type)} {tuple(t.dims)}, "
                                      f"tensor {name!r} is {info.dtype} {tuple(info.shape)}")
            plan.append((name, protos, in_main, node, info))
        decoded = {}
        if compact:
            decoded = _compact(reader, model, out, plan, graph_inputs, opset, new_nodes, removed, removed_nodes)
        arrays = reader.decode_many([p[0] for p in plan if p[0] not in decoded])
        hoist_ok, sub_removed = _hoistable(model, plan, decoded, held, holders), {}
        for name, protos, in_main, node, info in plan:
            if name in decoded:
                continue
            arr = arrays[name]
            big = external and info.dtype in _ORT_FLOATS and info.decoded_nbytes >= EXTERNAL_MIN_BYTES
            if big and in_main and protos[0][0].name in used:
                out.external[protos[0][0].name] = arr
            elif big and node is not None and node.output[0] in used:
                # a Constant node's weight becomes an initializer ONNX Runtime uses in place (it turns Constant
                # nodes into initializers itself): not copied into the serialized graph, not parsed back
                _external_stub(model, node.output[0], arr)
                removed_nodes.add(id(node))
                out.external[node.output[0]] = arr
            elif big and name in hoist_ok:  # a subgraph's Constant node: its value now comes from the outer scope
                g, n = held[name]
                _external_stub(model, n.output[0], arr)
                sub_removed.setdefault(id(g), (g, set()))[1].add(id(n))
                out.external[n.output[0]] = arr
            else:
                data = arr.tobytes()
                for t, _ in protos:
                    del t.external_data[:]
                    t.data_location = DEFAULT
                    t.raw_data = data
        if removed:
            kept = [t for t in model.graph.initializer if id(t) not in removed]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
        for g, ids in sub_removed.values():  # first: rebuilding the main graph's node list copies the subgraphs
            _delete_nodes(g, ids)
        if new_nodes:
            nodes = [n for n in model.graph.node if id(n) not in removed_nodes]
            del model.graph.node[:]
            model.graph.node.extend(new_nodes + nodes)
        elif removed_nodes:
            _delete_nodes(model.graph, removed_nodes)
        return out
    finally:
        if owned:
            reader.close()


_ORT_FLOATS = ("float32", "float16", "float64")  # dtypes an OrtValue can take from numpy (not bfloat16)


def _delete_nodes(graph, ids: set) -> None:
    """Take the nodes whose id() is in ``ids`` out of ``graph``, in place: deleting a few from the end
    backwards costs less than copying every other node into a new list."""
    for i in reversed([i for i, n in enumerate(graph.node) if id(n) in ids]):
        del graph.node[i]


def _hoistable(model, plan, decoded, held, holders) -> set:
    """The records of ``plan`` that prepare(hoist=True) makes main-graph initializers: large, referenced
    once, by the only 'value' of a Constant node inside a subgraph whose output name may move to the
    main graph (:func:`dcformat.graph.hoistable_in`, from the scopes the reference walk noted in
    ``holders``, a :class:`dcformat.graph.Holders`: ``held`` is empty without one)."""
    if not held:
        return set()
    wanted = {}
    for name, protos, _, _, info in plan:
        if (name in held and name not in decoded and len(protos) == 1 and info.dtype in _ORT_FLOATS
                and info.decoded_nbytes >= EXTERNAL_MIN_BYTES):
            g, n = held[name]
            if (n.op_type == "Constant" and not n.domain and len(n.attribute) == 1 and n.attribute[0].name == "value"
                    and len(n.output) == 1 and n.output[0] and n.output[0] not in wanted):
                wanted[n.output[0]] = (name, g)
    if not wanted:
        return set()
    from .graph import hoistable_in

    ok = hoistable_in(model, {k: g for k, (_, g) in wanted.items()}, holders.scopes)
    return {wanted[k][0] for k in ok}


def _compact(reader, model, out, plan, graph_inputs, opset, new_nodes, removed, removed_nodes) -> dict:
    """Compact mode: codebook-coded records become uint8 indices and a Gather/DequantizeLinear; returns
    the records so handled (name -> None)."""
    import onnx
    from onnx import helper, numpy_helper

    done = {}
    for name, protos, in_main, node, info in plan:
        if info.encoding not in (ENC_CB_DENSE, ENC_CB_SPARSE):
            continue
        proto = protos[0][0]
        why = _not_compactable(info, in_main or node is not None, len(protos), proto.name in graph_inputs and in_main,
                               opset)
        if not why:
            got = decode_indices(reader, name)
            if got is None:
                why = (f"per-channel scales on a {info.dtype} tensor" if info.scaled
                       else f"more than {COMPACT_MAX_VALUES} values")
            else:
                values, idx = got.values, got.indices
                target = proto.name if in_main else node.output[0]  # the value the graph reads
                ti, tc = target + COMPACT_SUFFIX_INDEX, target + COMPACT_SUFFIX_CODEBOOK
                uni = _uniform(values) if values.dtype == np.float32 and opset >= 10 and got.scales is None else None
                if in_main:
                    removed.add(id(proto))  # taken out in one pass: remove() is linear, so a loop of them quadratic
                else:
                    removed_nodes.add(id(node))  # the Constant node: the Gather/DequantizeLinear now makes its output
                if uni is not None:
                    scale, zp = uni
                    model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), tc + "_scale"),
                                                    numpy_helper.from_array(np.array(zp, np.uint8), tc + "_zero_point")])
                    new_nodes.append(helper.make_node("DequantizeLinear", [ti, tc + "_scale", tc + "_zero_point"],
                                                      [target], name=target + "::dcz_dequantize"))
                else:
                    model.graph.initializer.append(numpy_helper.from_array(values, tc))
                    gathered = target if got.scales is None else target + "::dcz_unscaled"
                    new_nodes += [
                        helper.make_node("Cast", [ti], [ti + "_i32"], to=onnx.TensorProto.INT32, name=ti + "::cast"),
                        helper.make_node("Gather", [tc, ti + "_i32"], [gathered], axis=0, name=target + "::dcz_gather"),
                    ]
                    if got.scales is not None:  # spec 7.5: times the channel's scale in float32, zeros +0.0
                        ts = target + COMPACT_SUFFIX_SCALES
                        model.graph.initializer.append(numpy_helper.from_array(got.scales, ts))
                        scaled = target + "::dcz_scaled" if got.needs_plus_zero else target
                        new_nodes.append(helper.make_node("Mul", [gathered, ts], [scaled], name=target + "::dcz_scale"))
                        if got.needs_plus_zero:  # -0.0 + 0.0 = +0.0; any other value is unchanged
                            model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32),
                                                                                   ts + "_zero"))
                            new_nodes.append(helper.make_node("Add", [scaled, ts + "_zero"], [target],
                                                              name=target + "::dcz_plus_zero"))
                _external_stub(model, ti, idx)
                out.external[ti] = idx
                out.compacted.append(name)
                done[name] = None
                continue
        out.kept[name] = why
    return done


def _np_dtype(data_type: int):
    """The numpy dtype of an ONNX data_type the format holds, else None (for messages)."""
    name = ONNX_DTYPE_NAMES.get(data_type)
    return None if name is None or name not in DTYPES else DTYPES[name]


EXTERNAL_MIN_BYTES = 4096  # smaller tensors (shape constants ...) go in the graph: ORT reads those while resolving it


_ONNX_TYPES: dict = {}  # numpy dtype -> np_dtype_to_onnx(dtype): that call costs ~20 us (numpy's dtype.name)


def _external_stub(model, name: str, arr: np.ndarray) -> None:
    """Declare an initializer whose data ONNX Runtime gets from add_external_initializers."""
    t = model.graph.initializer.add()
    t.name = name
    dt = arr.dtype
    code = _ONNX_TYPES.get(dt)
    if code is None:
        code = _ONNX_TYPES[dt] = np_dtype_to_onnx(dt)
    t.data_type = code
    t.dims.extend(arr.shape)
    t.data_location = EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "dcz"
    e = t.external_data.add()
    e.key, e.value = "tensor", name


def to_onnx(src, compact: bool = False):
    """The model of a .dcz file (path or open reader) as a self-contained onnx.ModelProto."""
    from onnx import numpy_helper

    p = prepare(src, compact=compact, external=False)
    for t in p.model.graph.initializer:
        if t.name in p.external:
            arr = p.external[t.name]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return p.model


def load_weights(src) -> dict:
    """All tensors of a .dcz file as a dict name -> numpy array (works for weights-only files)."""
    with gc_paused():  # as a session's load: the header's records are thousands of objects
        reader, owned = _reader(src)
        try:
            arrays = reader.decode_many(list(reader))  # read in runs, decoded together
            return {name: arrays[name] for name in reader}
        finally:
            if owned:
                reader.close()


def resolve_providers(providers) -> list:
    """Map 'cpu'/'cuda' to ORT names and check they are available; never fall back silently."""
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    out = []
    available = ort.get_available_providers()
    for p in providers:
        name = p[0] if isinstance(p, tuple) else p
        name = PROVIDERS.get(str(name).lower(), name)
        if name not in available:
            pkg = PROVIDER_PACKAGES.get(name)
            hint = f"; install {pkg} (pip install {pkg}) and make sure the GPU driver and CUDA libraries load" if pkg else ""
            raise ProviderError(f"{name} is not available in this onnxruntime (available: {', '.join(available)}){hint}")
        out.append((name, p[1]) if isinstance(p, tuple) else name)
    return out


_USED_OPTIONS = weakref.WeakSet()  # SessionOptions that carry a session's external initializers


def InferenceSession(path, providers=None, sess_options=None, compact: bool = False):  # noqa: N802 - mirrors ORT
    """A real onnxruntime.InferenceSession for the model in a .dcz file.

    ``providers`` as for ONNX Runtime (or 'cpu' / 'cuda'); a provider that is not available
    raises ProviderError instead of falling back to the CPU. ``compact`` keeps codebook
    weights as uint8 indices (about 4x less memory held by the model).
    ``sess_options`` receives the weights as external initializers, so it serves one session only.
    In compact mode the weights are rebuilt at each run; without ``sess_options`` the CPU memory
    arena is turned off so that they are freed after the run (with your own options, set
    ``enable_cpu_mem_arena = False`` for the same effect).
    """
    return _session(path, providers, sess_options, compact)


def _session(path, providers=None, sess_options=None, compact: bool = False, on_graph=None):
    """:func:`InferenceSession`; ``on_graph`` as for :func:`prepare` (dcrun reads the declared inputs there)."""
    with gc_paused():
        return _new_session(path, providers, sess_options, compact, on_graph)


def _new_session(path, providers, sess_options, compact: bool, on_graph):
    import onnxruntime as ort

    providers = resolve_providers(providers)
    if sess_options is not None and sess_options in _USED_OPTIONS:
        raise ValueError("sess_options was already given to a dcformat.InferenceSession, and ONNX Runtime keeps that "
                         "session's weights in it; pass a new SessionOptions for each session")
    p = prepare(path, compact=compact, hoist=True, on_graph=on_graph)
    so = sess_options if sess_options is not None else ort.SessionOptions()
    if sess_options is None:
        # fatal only: not a warning per initializer that is also a graph input, nor ANSI-coloured error lines
        # beside the exception that says the same (and becomes the CLI's one error line)
        so.log_severity_level = 4
    if p.compacted and sess_options is None:
        # ORT's CPU arena would keep the weights each run rebuilds (full size) for good after the first run
        so.enable_cpu_mem_arena = False
    names = list(p.external)
    values = [ort.OrtValue.ortvalue_from_numpy(p.external[n]) for n in names]
    if names:
        so.add_external_initializers(names, values)
        _USED_OPTIONS.add(so)
    kwargs = {"disabled_optimizers": ["ConstantFolding"]} if p.compacted else {}
    try:
        sess = ort.InferenceSession(p.model.SerializeToString(), sess_options=so, providers=providers, **kwargs)
    except Exception as e:  # noqa: BLE001 - ORT raises its own classes for bad graphs
        where = path.path if isinstance(path, DczReader) else os.fspath(path)
        raise FormatError(f"{where}: ONNX Runtime cannot load the model: {first_line(e)}") from None
    wanted = [x[0] if isinstance(x, tuple) else x for x in providers]
    got = sess.get_providers()
    missing = [w for w in wanted if w not in got]
    if missing:
        raise ProviderError(f"ONNX Runtime did not enable {', '.join(missing)} (session runs on {', '.join(got)}); "
                            f"check the {PROVIDER_PACKAGES.get(missing[0], 'onnxruntime')} install, GPU driver and CUDA libraries")
    sess._dcz_keepalive = (p.external, values)  # ORT uses these buffers in place
    sess._dcz_compact = (list(p.compacted), dict(p.kept))  # what compact mode did, for dcrun's note
    return sess


ONNX_PROTO_LIMIT = 2**31 - 1  # protobuf's limit on one serialized message


def save_onnx(src, out, compact: bool = False, external_data: bool | None = None) -> tuple[int, str | None]:
    """Write the model of a .dcz as an .onnx file (atomically); returns (bytes, data file or None).

    With ``external_data`` (automatic when the model would pass protobuf's 2 GB limit) the
    weights go to ``<out>.data`` beside it, referenced with ONNX's standard external data.
    """
    import onnx
    from onnx import numpy_helper

    from .atomic import atomic_output

    p = prepare(src, compact=compact, external=True)
    inline = p.model.ByteSize()  # what stays in the .onnx whatever the external data holds
    if inline >= ONNX_PROTO_LIMIT:  # e.g. a large record referenced from Constant nodes, filled in each time
        raise DczError(f"{os.fspath(out)}: the model's graph alone would be {inline:,} bytes, over protobuf's 2 GB "
                       "limit for an .onnx file (its weights can go to external data, this cannot); nothing written")
    total = sum(a.nbytes for a in p.external.values()) + inline
    if external_data is None:
        external_data = total >= ONNX_PROTO_LIMIT - (64 << 20)
    out = os.fspath(out)
    directory = os.path.dirname(os.path.abspath(out))
    base = os.path.basename(out)
    data_name = None
    by_name = {t.name: t for t in p.model.graph.initializer}
    if external_data:
        # the pair stays consistent: the weights go to a new file named by their digest, the new .onnx names it,
        # and only then are the weights files of an earlier decode removed (a crash leaves the old pair or the new)
        import hashlib

        h = hashlib.sha256(p.model.SerializeToString(deterministic=True))  # same pair <=> same name
        for name, arr in p.external.items():
            h.update(name.encode("utf-8", "surrogatepass") + b"\0")
            h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        data_name = f"{base}.{h.hexdigest()[:16]}.data"
        with atomic_output(os.path.join(directory, data_name)) as f:
            for name, arr in p.external.items():
                f.write(bytes(-f.tell() % 64))
                t = by_name[name]
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(f.tell())), ("length", str(arr.nbytes))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
                t.data_location = onnx.TensorProto.EXTERNAL
                f.write(np.ascontiguousarray(arr).tobytes())
    else:
        for name, arr in p.external.items():
            by_name[name].CopyFrom(numpy_helper.from_array(arr, name))
        if p.model.ByteSize() >= ONNX_PROTO_LIMIT:  # several references to one large record, inlined
            raise DczError(f"{out}: the model would be {p.model.ByteSize():,} bytes, over protobuf's 2 GB limit for "
                           "one .onnx file; pass --external-data (weights in a file beside it)")
    try:
        data = p.model.SerializeToString(deterministic=True)
    except Exception as e:  # noqa: BLE001 - protobuf's EncodeError (message too large), ValueError
        raise DczError(f"{out}: cannot serialize the model ({first_line(e)}); pass --external-data") from None
    with atomic_output(out) as f:
        f.write(data)
    import re

    for old in os.listdir(directory):  # weights files of earlier decodes to this .onnx, now unreferenced
        if old != data_name and (old == base + ".data" or re.fullmatch(re.escape(base) + r"\.[0-9a-f]{16}\.data", old)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, old))
    return len(data), data_name


def save_state_dict(src, out) -> int:
    """Write every tensor of a .dcz as a .safetensors file (atomically); returns its size."""
    from safetensors.numpy import save

    from .atomic import atomic_output

    weights = load_weights(src)
    data = save({k: np.ascontiguousarray(v) for k, v in weights.items()})
    with atomic_output(out) as f:
        f.write(data)
    return len(data)
