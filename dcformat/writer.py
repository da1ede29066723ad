"""Writing .dcz files: atomically (temporary file + rename) and deterministically."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from .atomic import atomic_output
from .constants import (
    DICT15_MINOR,
    DICT_MINOR,
    DTYPES,
    EXPANSION_SLACK,
    GRAPH_OBJECT_COST,
    GRAPH_PARSE_FACTOR,
    JSON_PARSE_FACTOR,
    MAX_EXPANSION,
    MAX_HEADER_BYTES,
    MAX_SECTIONS,
    PART_ALIGNMENT,
    SECTION_COST,
    SECTION_GRAPH,
    SECTION_METADATA,
    SECTION_PADDING,
    SECTION_TENSOR,
    deflate_dict,
    expansion_bound,
)
from .container import deflate, dump_json, file_size, layout, preamble
from .encode import EncodedTensor
from .errors import EncodeError
from .streams import align


def _chunks(parts) -> list:
    """The byte chunks of a section: each part, preceded by zero padding to PART_ALIGNMENT."""
    out, pos = [], 0
    for p in parts:
        start = align(pos, PART_ALIGNMENT)
        if start > pos:
            out.append(bytes(start - pos))
        out.append(memoryview(np.ascontiguousarray(p)).cast("B"))
        pos = start + len(out[-1])
    return out


def _crc(chunks) -> int:
    crc = 0
    for c in chunks:
        crc = zlib.crc32(c, crc)
    return crc


def _graph_bytes(graph) -> tuple[bytes | None, object]:
    """(serialized graph, the ModelProto if one was given)."""
    if graph is None or isinstance(graph, (bytes, bytearray)):
        return graph, None
    serialize = getattr(graph, "SerializeToString", None)
    if serialize is None:
        raise EncodeError(f"graph must be bytes or an onnx.ModelProto, got {type(graph).__name__}")
    return serialize(deterministic=True), graph


def _check_graph(gbytes: bytes, model, infos: dict) -> tuple[int, int]:
    """Refuse a graph that names a tensor the file will not hold, or that holds inline the weights
    also written as records (a model not passed through strip_weights); returns the decoded bytes
    its references name, once per reference (spec 5.2), and its objects (spec 10)."""
    from onnx import helper

    from .graph import graph_objects, iter_tensors, reference

    if model is None:
        import onnx
        from google.protobuf.message import DecodeError

        model = onnx.ModelProto()
        try:
            model.ParseFromString(gbytes)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise EncodeError(f"graph: not a valid ONNX ModelProto ({e})") from None
    total = 0
    for where, t in iter_tensors(model.graph):
        name = reference(t)
        if name is None:
            if t.name in infos and (t.raw_data or t.float_data or t.int32_data or t.int64_data or t.double_data):
                raise EncodeError(f"graph: {where} holds its data and is also written as a tensor record: pass the "
                                  "model through dcformat.graph.strip_weights, which replaces weights by references")
        elif name not in infos:
            raise EncodeError(f"graph: {where} refers to tensor {name!r}, which is not among the tensors written")
        else:
            info = infos[name]
            try:
                want = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
            except (KeyError, TypeError, ValueError):
                want = None
            if want != DTYPES[info.dtype] or tuple(t.dims) != tuple(info.shape):
                raise EncodeError(f"graph: {where} expects {want} {tuple(t.dims)}, tensor {name!r} is "
                                  f"{info.dtype} {tuple(info.shape)}")
            total += info.decoded_nbytes
    return total, graph_objects(model)


def _check_tensor(t: EncodedTensor) -> None:
    """What a reader refuses in a tensor's contents, refused before writing: a name that is not UTF-8 text,
    bool data other than bytes 0 and 1."""
    try:
        t.name.encode("utf-8")
    except (UnicodeEncodeError, AttributeError):
        raise EncodeError(f"tensor name {t.name!r} is not valid Unicode text (a lone surrogate?)") from None
    if t.info.scaled:
        scales = np.asarray(t.parts["scales"]).view(DTYPES[t.info.scale_dtype])
        if not np.isfinite(scales).all():
            raise EncodeError(f"tensor {t.name!r}: a per-channel scale is not finite (readers refuse it)")
    if t.info.dtype == "bool" and t.info.encoding == "raw":  # encode_lzma checks its input the same way
        data = np.asarray(t.parts["data"]).view(np.uint8)
        if data.size and data.max() > 1:
            raise EncodeError(f"tensor {t.name!r}: bool data holds bytes other than 0 and 1 (readers refuse it); "
                              "pass np.asarray(a, bool) or a.view(np.uint8) != 0")


def _padded_layout(entries, decoded: int, texts: list[tuple[int, int]], zdict: bytes | None = None):
    """Lay out the sections, with a padding section at the end (spec 5.4) if the file would
    otherwise be too small for its expansion bound to cover ``decoded`` bytes and the parse
    limits of ``texts`` ((factor, inflated bytes) of metadata and graph) and of the header."""
    pad, best, tries = 0, None, 0
    while best is None or tries < 8:  # the header grows with the padding entry: a few rounds settle it
        extra = [(SECTION_PADDING, pad, zlib.crc32(bytes(pad)), None)] if pad else []
        header, placed, text_len = layout(entries + extra, zdict)
        if text_len > MAX_HEADER_BYTES:
            raise EncodeError(f"the header would be {text_len} bytes of JSON, more than MAX_HEADER_BYTES ({MAX_HEADER_BYTES})")
        need = max([decoded, JSON_PARSE_FACTOR * text_len, SECTION_COST * len(placed)] + [f * n for f, n in texts])
        short = -(-(need - EXPANSION_SLACK) // MAX_EXPANSION) - file_size(header, placed)  # bound(size) >= need
        if short <= 0:
            best = header, placed, pad
            if short == 0 or pad == 0:
                break
        pad, tries = max(pad + short, 1), tries + 1
    return best


def write(path, tensors: Iterable[EncodedTensor], graph=None, metadata: Mapping | None = None, *,
          checked: bool = True, dictionary: bool | int = False) -> int:
    """Write a .dcz file; returns its size in bytes.

    ``tensors`` are :class:`EncodedTensor` (from the encoders), written in the given order;
    ``graph`` is an ONNX ModelProto (or its serialized bytes) whose initializers refer to the
    tensors by name, or None for a weights-only file; ``metadata`` is a JSON-able mapping.
    The file appears at ``path`` complete or not at all.

    A file may decode to at most MAX_EXPANSION x its size + EXPANSION_SLACK bytes (spec
    section 10). Where the tensors (a large all-zero buffer, say) or the graph's references
    expand more than that, the writer appends a padding section of zeros, about 1/1024 of
    the excess, so that any reader opens the file with its default limits (spec 5.4).
    ``checked=False`` writes the sections exactly as given, whether readers will accept the
    file or not (for making test files).

    ``dictionary=True`` deflates the header, metadata and graph against the newest preset dictionary,
    DEFLATE_DICT_15 (spec 2.2, 1.5), and the file is a 1.5 file, which readers before 1.5 refuse;
    ``dictionary=4`` against 1.4's DEFLATE_DICT (a 1.4 file, as 1.4 writers wrote it; ``dictionary=5``
    is True). A dictionary saves about 200 bytes of a small model's header, 400 of dcconvert's metadata
    and a third to a half of a small graph. Without it the file is what earlier writers wrote, byte for byte.
    """
    if dictionary is True:
        dict_minor = DICT15_MINOR
    elif dictionary is False or dictionary is None:
        dict_minor = 0
    elif type(dictionary) is int and dictionary in (DICT_MINOR, DICT15_MINOR):
        dict_minor = dictionary
    else:
        raise EncodeError(f"dictionary must be True, False, {DICT_MINOR} or {DICT15_MINOR}, got {dictionary!r}")
    zdict = deflate_dict(dict_minor)
    sections = []  # (kind, chunks, tensor descriptor)
    texts = []  # (parse factor, inflated bytes) of metadata and graph
    if metadata is not None:
        try:
            meta = dump_json(dict(sorted(dict(metadata).items())))
        except (TypeError, ValueError) as e:
            raise EncodeError(f"metadata is not JSON-serialisable: {e}") from None
        sections.append((SECTION_METADATA, [deflate(meta, zdict)], None))
        texts.append((JSON_PARSE_FACTOR, len(meta)))
    gbytes, model = _graph_bytes(graph)
    if gbytes is not None:
        sections.append((SECTION_GRAPH, [deflate(gbytes, zdict)], None))
        texts.append((GRAPH_PARSE_FACTOR, len(gbytes)))
    seen = {}
    for t in tensors:
        if not isinstance(t, EncodedTensor):
            raise EncodeError(f"expected an EncodedTensor, got {type(t).__name__}")
        if t.name in seen:
            raise EncodeError(f"duplicate tensor name {t.name!r}")
        if checked:
            _check_tensor(t)
        seen[t.name] = t.info
        sections.append((SECTION_TENSOR, _chunks(t.parts.values()), t.info.descriptor()))
    if len(sections) + 1 > MAX_SECTIONS:
        raise EncodeError(f"{len(sections)} sections: a file holds at most {MAX_SECTIONS - 1} besides padding")
    entries = [(k, sum(len(c) for c in ch), _crc(ch), d) for k, ch, d in sections]
    if checked:
        for (kind, chunks, _), (_, n) in zip(sections, texts):
            if n > expansion_bound(len(chunks[0])):
                raise EncodeError(f"{kind}: {n} bytes that deflate to {len(chunks[0])}, more than {MAX_EXPANSION}:1 "
                                  f"beyond {EXPANSION_SLACK} bytes; readers refuse to inflate that much")
        decoded = sum(info.decoded_nbytes for info in seen.values())
        if gbytes is not None:
            referenced, objects = _check_graph(gbytes, model, seen)
            decoded = max(decoded, referenced, GRAPH_OBJECT_COST * objects)
        header, placed, npad = _padded_layout(entries, decoded, texts, zdict)
        if npad:
            sections.append((SECTION_PADDING, [bytes(npad)], None))
    else:
        header, placed, _ = layout(entries, zdict)

    with atomic_output(path, suffix=".dcz.tmp") as f:
        # the lowest minor version that defines everything the file uses: 1.0 unless float-planes (1.1),
        # per-channel scales (1.2), lzma (1.3) or a preset dictionary (1.4: DEFLATE_DICT, 1.5: DEFLATE_DICT_15) (spec 2.2)
        minor = max([i.minor for i in seen.values()] + [dict_minor])
        f.write(preamble(header, minor=minor))
        f.write(header)
        for sec, (_, chunks, _) in zip(placed, sections):
            f.write(bytes(sec.offset - f.tell()))
            for c in chunks:
                f.write(c)
        return f.tell()
