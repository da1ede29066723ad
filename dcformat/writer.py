"""Writing .dcz files: atomically (temporary file + rename) and deterministically."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from .atomic import atomic_output
from .constants import PART_ALIGNMENT, SECTION_GRAPH, SECTION_METADATA, SECTION_TENSOR
from .container import deflate, dump_json, layout, preamble
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


def _graph_bytes(graph) -> bytes:
    if graph is None or isinstance(graph, (bytes, bytearray)):
        return graph
    serialize = getattr(graph, "SerializeToString", None)
    if serialize is None:
        raise EncodeError(f"graph must be bytes or an onnx.ModelProto, got {type(graph).__name__}")
    return serialize(deterministic=True)


def write(path, tensors: Iterable[EncodedTensor], graph=None, metadata: Mapping | None = None) -> int:
    """Write a .dcz file; returns its size in bytes.

    ``tensors`` are :class:`EncodedTensor` (from the encoders), written in the given order;
    ``graph`` is an ONNX ModelProto (or its serialized bytes) whose initializers refer to the
    tensors by name, or None for a weights-only file; ``metadata`` is a JSON-able mapping.
    The file appears at ``path`` complete or not at all.
    """
    sections = []  # (kind, chunks, tensor descriptor)
    if metadata is not None:
        try:
            meta = dump_json(dict(sorted(dict(metadata).items())))
        except (TypeError, ValueError) as e:
            raise EncodeError(f"metadata is not JSON-serialisable: {e}") from None
        sections.append((SECTION_METADATA, [deflate(meta)], None))
    gbytes = _graph_bytes(graph)
    if gbytes is not None:
        sections.append((SECTION_GRAPH, [deflate(gbytes)], None))
    seen = set()
    for t in tensors:
        if not isinstance(t, EncodedTensor):
            raise EncodeError(f"expected an EncodedTensor, got {type(t).__name__}")
        if t.name in seen:
            raise EncodeError(f"duplicate tensor name {t.name!r}")
        seen.add(t.name)
        sections.append((SECTION_TENSOR, _chunks(t.parts.values()), t.info.descriptor()))
    header, placed = layout([(k, sum(len(c) for c in ch), _crc(ch), d) for k, ch, d in sections])

    with atomic_output(path, suffix=".dcz.tmp") as f:
        f.write(preamble(header))
        f.write(header)
        for sec, (_, chunks, _) in zip(placed, sections):
            f.write(bytes(sec.offset - f.tell()))
            for c in chunks:
                f.write(c)
        return f.tell()
