"""The graph section: an ONNX ModelProto whose tensors refer to .dcz tensor records.

:func:`strip_weights` moves tensor data out of a model (initializers, Constant-node
tensors and the same inside subgraphs) and leaves references; :func:`fill_weights`
puts decoded arrays back. Both walk every nested graph. :func:`check_references` makes
sure no tensor anywhere in a model -- sparse tensors, functions and training graphs
included -- can make an ONNX runtime read data from outside the .dcz file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from .constants import GRAPH_LOCATION, GRAPH_LOCATION_KEY, GRAPH_TENSOR_KEY
from .errors import FormatError, TensorError
from .onnxproto import ATTR_GRAPH, ATTR_GRAPHS, ATTR_TENSOR, ATTR_TENSORS, EXTERNAL


def iter_tensors(graph, path: str = "") -> Iterator[tuple[str, object]]:
    """(where, TensorProto) for every tensor held in ``graph`` and its subgraphs."""
    for t in graph.initializer:
        yield f"{path}initializer {t.name!r}", t
    for node in graph.node:
        for attr in node.attribute:
            where = f"{path}node {node.name or node.op_type!r} attribute {attr.name!r}"
            if attr.type == ATTR_TENSOR:
                yield where, attr.t
            elif attr.type == ATTR_TENSORS:
                for t in attr.tensors:
                    yield where, t
            elif attr.type == ATTR_GRAPH:
                yield from iter_tensors(attr.g, f"{where} > ")
            elif attr.type == ATTR_GRAPHS:
                for g in attr.graphs:
                    yield from iter_tensors(g, f"{where} > ")


def iter_all_tensors(model) -> Iterator[tuple[str, object, bool]]:
    """(where, TensorProto, fillable) for every TensorProto anywhere in a ModelProto.

    Unlike :func:`iter_tensors` this also visits sparse tensors (initializers and
    attributes), the tensors of model-local functions and of training graphs, and tensor
    fields of attributes whatever their declared type. ``fillable`` is true for the places
    :func:`iter_tensors` visits, where a reference to a tensor record is filled in.
    """
    def attribute(a, where, ctx):
        if a.HasField("t"):
            yield where, a.t, ctx and a.type == ATTR_TENSOR
        for t in a.tensors:
            yield where, t, ctx and a.type == ATTR_TENSORS
        if a.HasField("sparse_tensor"):
            yield from sparse(a.sparse_tensor, f"{where} sparse tensor")
        for st in a.sparse_tensors:
            yield from sparse(st, f"{where} sparse tensor")
        if a.HasField("g"):
            yield from graph(a.g, f"{where} > ", ctx and a.type == ATTR_GRAPH)
        for g in a.graphs:
            yield from graph(g, f"{where} > ", ctx and a.type == ATTR_GRAPHS)

    def sparse(st, where):
        yield f"{where} {st.values.name!r} (values)", st.values, False
        yield f"{where} {st.values.name!r} (indices)", st.indices, False

    def nodes(ns, path, ctx):
        for node in ns:
            for a in node.attribute:
                yield from attribute(a, f"{path}node {node.name or node.op_type!r} attribute {a.name!r}", ctx)

    def graph(g, path, ctx):
        for t in g.initializer:
            yield f"{path}initializer {t.name!r}", t, ctx
        for st in g.sparse_initializer:
            yield from sparse(st, f"{path}sparse initializer")
        yield from nodes(g.node, path, ctx)

    yield from graph(model.graph, "", True)
    for f in model.functions:
        path = f"function {f.name!r} "
        yield from nodes(f.node, path, False)
        for a in f.attribute_proto:
            yield from attribute(a, f"{path}attribute {a.name!r}", False)
    for i, ti in enumerate(model.training_info):
        yield from graph(ti.initialization, f"training_info {i} initialization > ", False)
        yield from graph(ti.algorithm, f"training_info {i} algorithm > ", False)


def graph_objects(model, limit: int | None = None) -> int:
    """How many objects a consumer builds for ``model`` (spec/FORMAT.md section 10): graphs, nodes,
    node inputs and outputs, attributes, tensors and sparse tensors, graph inputs, outputs and value
    infos, functions and their parts, training bindings. Stops counting once past ``limit``, so the
    cost of counting is bounded by the limit, not by the graph."""
    n = 0
    graphs = [model.graph]
    node_lists = []
    for f in model.functions:
        n += 1 + len(f.input) + len(f.output) + len(f.attribute) + len(f.attribute_proto) + len(f.value_info)
        node_lists.append(f.node)
        for a in f.attribute_proto:
            n += len(a.tensors) + len(a.sparse_tensors) + len(a.graphs)
            graphs.extend(a.graphs)
            if a.HasField("g"):
                graphs.append(a.g)
    for ti in model.training_info:
        n += 1 + len(ti.initialization_binding) + len(ti.update_binding)
        graphs += [ti.initialization, ti.algorithm]
    over = limit is not None
    while graphs or node_lists:
        if graphs:
            g = graphs.pop()
            n += (1 + len(g.node) + len(g.initializer) + len(g.sparse_initializer) + len(g.input) + len(g.output)
                  + len(g.value_info) + len(g.quantization_annotation))
            ns = g.node
        else:
            ns = node_lists.pop()
            n += len(ns)
        if over and n > limit:
            return n
        for node in ns:
            n += len(node.input) + len(node.output)
            attrs = node.attribute
            if attrs:
                n += len(attrs)
                for a in attrs:
                    n += len(a.tensors) + len(a.sparse_tensors) + len(a.graphs)
                    graphs.extend(a.graphs)
                    if a.HasField("g"):
                        graphs.append(a.g)
                    if a.HasField("t") or a.HasField("sparse_tensor"):
                        n += 1
            if over and n > limit:
                return n
    return n


def objects_bound(model, nbytes: int) -> int:
    """An upper bound on :func:`graph_objects` of ``model`` parsed from ``nbytes`` serialized bytes,
    found without walking it. Every object that function counts is an element of a repeated field
    or a message field that is present, and owns the tag and length (at least 2 bytes) that start it
    on the wire; the exceptions are the main graph and the two graphs of each training_info element,
    counted even when absent. So when this bound is within the limit, the walk is not needed."""
    return nbytes // 2 + 1 + 2 * len(model.training_info)


def check_references(model) -> None:
    """Raise FormatError unless every EXTERNAL tensor of ``model`` is a reference to a tensor record
    in a place where records are filled in (spec/FORMAT.md 5.2): nothing may point outside the file.
    Every tensor name must be valid UTF-8 (a protobuf string)."""
    try:
        for where, t, fillable in iter_all_tensors(model):
            if not isinstance(t.name, str):  # protobuf hands out a string field that is not UTF-8 as bytes
                raise FormatError(f"graph: {where}: tensor name {t.name!r} is not valid UTF-8")
            if t.data_location != EXTERNAL:
                continue
            name = reference(t)
            if name is None:
                raise FormatError(f"graph: {where} refers to external data outside the .dcz file, which is not allowed")
            if not fillable:
                raise FormatError(f"graph: {where} refers to tensor {name!r} from a place where tensor records are "
                                  "not filled in (sparse tensors, functions and training graphs must hold their data)")
    except RecursionError:  # protobuf's own nesting limit normally comes first
        raise FormatError("graph: subgraphs are nested too deeply") from None


def referenced_bytes(model, sizes: Mapping[str, int]) -> int:
    """Bytes a rebuilt model holds for its references: ``sizes[name]`` once per reference to ``name``.

    Several references may name one record, and each gets its own copy of the data when
    the model is rebuilt, so this -- not the records' total -- is what a graph expands to.
    """
    total = 0
    for _, t in iter_tensors(model.graph):
        name = reference(t)
        if name is not None:
            total += sizes.get(name, 0)
    return total


def reference(t) -> str | None:
    """The record name a TensorProto refers to, or None if it holds its own data."""
    if t.data_location != EXTERNAL:
        return None
    location = record = None
    for e in t.external_data:  # as a dict of the entries would: the last of a repeated key counts
        if e.key == GRAPH_LOCATION_KEY:
            location = e.value
        elif e.key == GRAPH_TENSOR_KEY:
            record = e.value
    return record if location == GRAPH_LOCATION else None



class _TooMany(Exception):
    """The count of :func:`scan_references` passed its limit."""


class Scopes:
    """What :func:`hoistable_in` needs of a model's subgraphs, noted by the walk of :func:`scan_references`
    (instead of a second walk of every graph): for each subgraph its parent graph and the node inputs it reads,
    and every name a subgraph defines (node outputs, graph inputs, initializers) or gives out (graph outputs)."""

    def __init__(self):
        self.graphs = []  # the subgraphs walked: kept alive, so that their id() stays theirs
        self.parent: dict[int, int] = {}  # id(subgraph) -> id(the graph holding its node)
        self.uses: dict[int, set] = {}  # id(subgraph) -> the inputs of its own nodes
        self.outs: list = []  # every output of every subgraph's nodes (a list: a name made twice counts twice)
        self.names: list = []  # the inputs, initializer and sparse initializer names of every subgraph
        self.graph_outputs: set = set()  # the outputs of every subgraph
        self.main_uses: set | None = None  # the inputs of the main graph's nodes (only where there are subgraphs)


class Holders(dict):
    """``holders`` for :func:`scan_references` that also takes the walk's :class:`Scopes` (``.scopes``)."""

    def __init__(self):
        super().__init__()
        self.scopes = Scopes()


def scan_references(model, holders: dict | None = None, used: set | None = None, limit: int | None = None
                    ) -> list[tuple] | None:
    """Check ``model`` as :func:`check_references` does, and return its references, in one walk:
    ``(TensorProto, record name, node, in_main)`` for every tensor that refers to a record, in the
    order of :func:`iter_tensors`; ``node`` is the main-graph node whose TENSOR attribute holds it
    (None for initializers and inside subgraphs), ``in_main`` is true for a main-graph initializer.

    This is the walk a load makes (the reader's checks, then filling in): where a check fails,
    :func:`check_references` walks again to name the place in its error. With ``holders`` (a dict),
    the references held by a TENSOR attribute of a node inside a subgraph are also noted there:
    ``holders[i] = (graph, node)`` for ``refs[i]``, the subgraph and its node. With ``used`` (a set),
    the names of all node inputs, in every graph, are added to it.

    With ``limit``, the same walk counts the objects :func:`graph_objects` counts and returns None as
    soon as there are more than ``limit`` (a graph of functions or training graphs is counted by
    graph_objects itself): the count that a small file with a large graph needs, without a second walk.
    """
    refs: list[tuple] = []
    scopes = holders.scopes if isinstance(holders, Holders) else None
    rare = len(model.functions) or len(model.training_info)
    count = None
    if limit is not None:
        if rare:
            if graph_objects(model, limit) > limit:
                return None
        else:
            count = [0, limit]
    try:
        ok = _scan_graph(model.graph, True, True, refs, holders, used, count, scopes)
        if scopes is not None and scopes.uses:  # the subgraphs' inputs were noted per subgraph
            scopes.main_uses = set(used) if used is not None else None
            if used is not None:
                used.update(*scopes.uses.values())
        if ok and rare:  # rare: the full walk checks those
            check_references(model)
    except _TooMany:
        return None
    except RecursionError:
        raise FormatError("graph: subgraphs are nested too deeply") from None
    if not ok:
        check_references(model)  # raises, naming the place
        raise FormatError("graph: a tensor refers to external data that is not a tensor record")  # pragma: no cover
    return refs


def _scan_tensor(t, fillable: bool, node, in_main: bool, refs: list) -> bool:
    if type(t.name) is not str:  # not valid UTF-8
        return False
    if t.data_location != EXTERNAL:
        return True
    ed = t.external_data
    if len(ed) == 2:  # what strip_weights writes: location, then tensor (reference() for any other list)
        loc, rec = ed
        name = rec.value if (loc.key == GRAPH_LOCATION_KEY and rec.key == GRAPH_TENSOR_KEY
                             and loc.value == GRAPH_LOCATION) else reference(t)
    else:
        name = reference(t)
    if name is None or not fillable:
        return False
    refs.append((t, name, node, in_main))
    return True


def _scan_sparse(st) -> bool:
    return (type(st.values.name) is str and type(st.indices.name) is str
            and st.values.data_location != EXTERNAL and st.indices.data_location != EXTERNAL)


# AttributeProto's field numbers (onnx.proto) of the fields that hold tensors or graphs
_F_T, _F_G, _F_TENSORS, _F_GRAPHS, _F_SPARSE_TENSOR, _F_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
_ATTR_HOLDERS = frozenset((_F_T, _F_G, _F_TENSORS, _F_GRAPHS, _F_SPARSE_TENSOR, _F_SPARSE_TENSORS))


def _scan_graph(g, fillable: bool, main: bool, refs: list, holders: dict | None = None,
                used: set | None = None, count: list | None = None, scopes: Scopes | None = None) -> bool:
    """The walk of :func:`scan_references` over one graph; False where check_references would raise.
    ``count``: [objects so far, limit], counted as :func:`graph_objects` counts (raises _TooMany past it).
    ``scopes``: a subgraph's names and uses are noted there (its node inputs there, not in ``used``)."""
    ok = True
    outs = None
    if scopes is not None and not main:
        used = scopes.uses.setdefault(id(g), set())
        outs = scopes.outs.extend
        names = scopes.names
        names += [x.name for x in g.input]
        names += [t.name for t in g.initializer]
        names += [st.values.name for st in g.sparse_initializer]
        scopes.graph_outputs.update(o.name for o in g.output)
    if count is not None:
        count[0] += (1 + len(g.node) + len(g.initializer) + len(g.sparse_initializer) + len(g.input) + len(g.output)
                     + len(g.value_info) + len(g.quantization_annotation))
        if count[0] > count[1]:
            raise _TooMany
    for t in g.initializer:
        ok &= _scan_tensor(t, fillable, None, main, refs)
    for st in g.sparse_initializer:
        ok &= _scan_sparse(st)
    update = used.update if used is not None else None
    holders_fields = _ATTR_HOLDERS
    for node in g.node:
        if update is not None:
            update(node.input)
        if outs is not None:
            outs(node.output)
        attrs = node.attribute
        if count is not None:
            count[0] += len(node.input) + len(node.output) + len(attrs)
            if count[0] > count[1]:
                raise _TooMany
        if not attrs:
            continue
        for a in attrs:
            # the fields that are set, in one call (most attributes hold ints or floats: nothing to look at)
            held = False
            for fd, v in a.ListFields():
                k = fd.number
                if k not in holders_fields:
                    continue
                if k == _F_T:
                    held = True
                    ok &= _scan_tensor(v, fillable and a.type == ATTR_TENSOR, node if main else None, False, refs)
                    if holders is not None and not main and refs and refs[-1][0] is v:
                        holders[len(refs) - 1] = (g, node)
                elif k == _F_TENSORS:
                    if count is not None:
                        count[0] += len(v)
                    for t in v:
                        ok &= _scan_tensor(t, fillable and a.type == ATTR_TENSORS, None, False, refs)
                elif k == _F_SPARSE_TENSOR:
                    held = True
                    ok &= _scan_sparse(v)
                elif k == _F_SPARSE_TENSORS:
                    if count is not None:
                        count[0] += len(v)
                    for st in v:
                        ok &= _scan_sparse(st)
                elif k == _F_G:
                    if scopes is not None:
                        scopes.graphs.append(v)
                        scopes.parent[id(v)] = id(g)
                    ok &= _scan_graph(v, fillable and a.type == ATTR_GRAPH, False, refs, holders, used, count, scopes)
                else:  # graphs
                    if count is not None:
                        count[0] += len(v)
                    for sub in v:
                        if scopes is not None:
                            scopes.graphs.append(sub)
                            scopes.parent[id(sub)] = id(g)
                        ok &= _scan_graph(sub, fillable and a.type == ATTR_GRAPHS, False, refs, holders, used, count,
                                          scopes)
            if held and count is not None:
                count[0] += 1  # a tensor or a sparse tensor: one object, as graph_objects counts it
        if count is not None and count[0] > count[1]:
            raise _TooMany
    return bool(ok)



def hoistable(model, wanted: dict) -> set[str]:
    """Of ``wanted`` (value name -> the subgraph whose Constant node makes it), the names that can be
    made by a main-graph initializer instead, without changing what any name refers to: defined once
    in the whole model (by that node: no other node output, graph input or initializer of that name in
    any graph), the output of no graph, and used, only inside that subgraph or graphs nested in it
    (ONNX Runtime drops an initializer that nothing uses, and then refuses its external data)."""
    defs = dict.fromkeys(wanted, 0)
    names = frozenset(wanted)
    used = set()
    bad = set()
    by_graph: dict[int, list] = {}  # id(subgraph) -> the names its Constant nodes make (wanted holds the graphs)
    for n, sub in wanted.items():
        by_graph.setdefault(id(sub), []).append(n)

    def walk(g, inside: frozenset):
        own = by_graph.get(id(g))
        if own:
            inside = inside | frozenset(own)
        for x in g.input:
            if x.name in defs:
                defs[x.name] += 1
        for t in g.initializer:
            if t.name in defs:
                defs[t.name] += 1
        for st in g.sparse_initializer:
            if st.values.name in defs:
                defs[st.values.name] += 1
        for o in g.output:
            if o.name in defs:
                bad.add(o.name)
        for node in g.node:
            if not names.isdisjoint(node.output):  # one C loop per node; the names rarely occur
                for o in node.output:
                    if o in defs:
                        defs[o] += 1
            if not names.isdisjoint(node.input):
                for i in node.input:
                    if i in defs:
                        used.add(i)
                        if i not in inside:
                            bad.add(i)
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g, inside)
                for sub in a.graphs:
                    walk(sub, inside)

    try:
        walk(model.graph, frozenset())
    except RecursionError:  # pragma: no cover - scan_references walked the same nesting first
        return set()
    return {n for n, k in defs.items() if k == 1 and n in used and n not in bad}


def hoistable_in(model, wanted: dict, scopes: Scopes) -> set[str]:
    """:func:`hoistable` from what the walk of :func:`scan_references` noted in ``scopes`` (the same answer,
    without walking every graph again): only the main graph's nodes are looked at here, for their outputs."""
    if not wanted:
        return set()
    from collections import Counter

    names = frozenset(wanted)
    g = model.graph
    defs = Counter(x for x in scopes.outs if x in names)
    defs.update(x for x in scopes.names if x in names)
    defs.update(x.name for x in g.input if x.name in names)
    defs.update(t.name for t in g.initializer if t.name in names)
    defs.update(st.values.name for st in g.sparse_initializer if st.values.name in names)
    for node in g.node:
        if not names.isdisjoint(node.output):
            defs.update(o for o in node.output if o in names)
    bad = names & (scopes.graph_outputs | {o.name for o in g.output})
    main_uses = scopes.main_uses or set()
    parent = scopes.parent
    ok = set()
    for n, sub in wanted.items():
        if defs[n] != 1 or n in bad or n in main_uses:
            continue
        home, seen = id(sub), False
        for gid, uses in scopes.uses.items():
            if n not in uses:
                continue
            seen = True
            while gid != home and gid in parent:  # up to the graph that makes it, or to the main graph
                gid = parent[gid]
            if gid != home:
                break
        else:
            if seen:
                ok.add(n)
    return ok


def _walk(graph, prefix: str = ""):
    """(prefix, default name, TensorProto, is_initializer) for every tensor of ``graph`` and its
    subgraphs, in the order of :func:`iter_tensors`. ``prefix`` is the path of the subgraph
    (``""`` in the main graph, ``"If_0.else_branch/"`` inside one); the default name of a
    tensor is its own name, or for an unnamed one the output of its Constant node, or
    ``<node>.<attribute>`` (``.<k>`` for the k-th of a tensors attribute)."""
    for t in graph.initializer:
        yield prefix, t.name, t, True
    for i, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{i}"
        for attr in node.attribute:
            if attr.type == ATTR_TENSOR:
                base = node.output[0] if node.op_type == "Constant" and node.output and node.output[0] else f"{label}.{attr.name}"
                yield prefix, attr.t.name or base, attr.t, False
            elif attr.type == ATTR_TENSORS:
                for k, t in enumerate(attr.tensors):
                    yield prefix, t.name or f"{label}.{attr.name}.{k}", t, False
            elif attr.type == ATTR_GRAPH:
                yield from _walk(attr.g, f"{prefix}{label}.{attr.name}/")
            elif attr.type == ATTR_GRAPHS:
                for k, g in enumerate(attr.graphs):
                    yield from _walk(g, f"{prefix}{label}.{attr.name}.{k}/")


def record_names(model) -> list[str]:
    """The tensor-record name of every tensor of ``model`` (main graph and subgraphs), in the
    order of :func:`iter_tensors`: what :func:`strip_weights` names the records, and what
    ``dcinspect`` shows for an ONNX file, so that the two line up.

    * A tensor of the main graph keeps its own name; an unnamed one (a Constant node's value)
      takes the name of the node's output.
    * A tensor inside a subgraph is named the same way when that name is its alone in the model
      (exporters' output names such as ``If_0_then_branch__Inline_0__/rnn/Constant_3_output_0``
      already say where they live). A name that two subgraph tensors share, or that another
      tensor has as its own, is prefixed by the subgraph's path in every subgraph that uses it:
      ``If_0.else_branch/c_out`` (``<node name or OpType_index>.<attribute>/`` for each level;
      ``.<k>`` for the k-th graph of a graphs attribute).
    * A name still taken gets ``#1``, ``#2``, ... (a model with duplicate names).
    """
    from collections import Counter

    entries = list(_walk(model.graph))
    own = {t.name for _, _, t, _ in entries if t.name}
    main = {base for prefix, base, _, _ in entries if not prefix}
    uses = Counter(base for prefix, base, _, _ in entries if prefix)
    taken: set[str] = set()
    names = []
    for prefix, base, t, _ in entries:
        alone = uses[base] == 1 and base not in main and (base == t.name or base not in own)
        name = base if not prefix or alone else prefix + base
        if name in taken or (name in own and name != t.name):
            stem, i = name, 1
            while name in taken or (name in own and name != t.name):
                name, i = f"{stem}#{i}", i + 1
        taken.add(name)
        names.append(name)
    return names


def _to_array(t, where: str) -> np.ndarray:
    """numpy_helper.to_array, with a hostile TensorProto (unknown data_type, dims that do not fit its data,
    absurd dims) a FormatError instead of a KeyError, a ValueError from reshape or a huge allocation."""
    import math

    from onnx import helper, numpy_helper

    from .constants import MAX_ELEMENTS, MAX_RANK
    from .errors import first_line

    what = f"{where}: tensor {t.name!r}"
    dims = list(t.dims)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
        raise FormatError(f"{what}: bad dims {dims[:8]}{' ...' if len(dims) > 8 else ''}")
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{what}: unknown data_type {t.data_type}") from None
    n = math.prod(dims)
    if t.raw_data and dt.itemsize and dt.kind != "V" and len(t.raw_data) != n * dt.itemsize \
            and t.data_type not in _SUB_BYTE:
        raise FormatError(f"{what}: {len(t.raw_data)} bytes of raw_data for {n} elements of {dt} (dims {dims})")
    try:
        return numpy_helper.to_array(t)
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError) as e:
        raise FormatError(f"{what}: its data does not fit its dims and data_type ({first_line(e)})") from None


_SUB_BYTE = (21, 22, 25, 26, 23)  # UINT4, INT4, FLOAT4E2M1, ... : packed two per byte


def strip_weights(model, keep: Callable[[str, np.ndarray], bool] | None = None, copy: bool = True):
    """Copy of ``model`` with tensor data replaced by references; returns (model, {name: array}).

    With ``copy=False`` the model is changed in place (no second copy of a large model).

    Every numeric tensor is moved unless ``keep(name, array)`` is true. Records are named by
    :func:`record_names` (unique, short: a subgraph's tensors carry the subgraph's path).
    An initializer keeps its own name in the graph (nodes refer to it by that name; the
    reference names the record); a tensor held in a node attribute takes its record's name.
    """
    import onnx
    from onnx import numpy_helper

    if copy:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    arrays: dict[str, np.ndarray] = {}
    names = record_names(model)
    for (_, _, t, is_init), name in zip(_walk(model.graph), names):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        arr = _to_array(t, f"record {name!r}")
        if keep is not None and keep(name, arr):
            continue
        if not is_init:
            t.name = name
        arrays[name] = arr
        for field in ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(field)
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in ((GRAPH_LOCATION_KEY, GRAPH_LOCATION), (GRAPH_TENSOR_KEY, name)):
            e = t.external_data.add()
            e.key, e.value = k, v
    return model, arrays


def fill_weights(model, arrays: Mapping[str, np.ndarray], only_listed: bool = False):
    """Put the referenced arrays into ``model`` (in place) and return it.

    With ``only_listed``, references to names not in ``arrays`` are left in place.
    """
    import onnx
    from onnx import helper

    check_references(model)
    for where, t in iter_tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL and reference(t) is None:
            # never let a file make the runtime read other files
            raise FormatError(f"graph: {where} refers to external data outside the .dcz file, which is not allowed")
        name = reference(t)
        if name is None:
            continue
        if name not in arrays:
            if only_listed:
                continue
            raise FormatError(f"graph: {where} refers to tensor {name!r}, which the file does not hold")
        arr = arrays[name]
        want = helper.tensor_dtype_to_np_dtype(t.data_type)
        if np.dtype(arr.dtype) != np.dtype(want) or tuple(arr.shape) != tuple(t.dims):
            raise TensorError(
                f"graph: {where} expects {np.dtype(want)} {tuple(t.dims)}, tensor {name!r} is {arr.dtype} {arr.shape}"
            )
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = np.ascontiguousarray(arr).tobytes()
    return model
