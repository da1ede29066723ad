"""A structure-aware mutator for .dcz files (libFuzzer custom mutator, or stand-alone with a seeded RNG).

Random bytes almost never get past the CRCs and the section tiling. This mutator takes a
file apart (version, JSON header, one payload per section), changes one thing -- a value
anywhere in the header, a part of a tensor (its Huffman code lengths, lane table,
payload, codebook), a whole section, the list of sections -- and lays the file out again
with offsets, lengths and CRCs recomputed, so the reader's deeper checks and the decode
kernels see the damage. Some of the time it leaves offsets or CRCs stale, or mutates the
raw bytes, so the outer checks stay covered as well.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import zlib

MAGIC = b"\x89DCZ\r\n\x1a\n"
PREAMBLE = struct.Struct("<8sHHIII")
ALIGNMENT = 64  # when dcformat cannot be imported
PART_ALIGNMENT = 8

try:
    import atheris
except ImportError:
    atheris = None

INTERESTING_INTS = [
    0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 257, 511, 512, 1023, 1024, 4095, 4096,
    1 << 14, 1 << 15, 1 << 16, (1 << 24) - 1, 1 << 24, 1 << 25, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**33, 2**40,
    2**40 + 1, 2**43, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -2, -(2**31), -(2**63),
]
INTERESTING_VALUES = INTERESTING_INTS + [
    0.0, 0.5, -0.5, 1.5, 1e308, 1e999, True, False, None, "", "x", [], [0], [1, 1], [[1]], {}, {"a": 1},
    "float32", "float16", "bfloat16", "float64", "int8", "uint8", "int64", "bool", "raw", "codebook-dense",
    "codebook-sparse", "tensor", "graph", "metadata", "future-kind", "a" * 5000,
    "float-planes", "stored", "huffman", ["stored", "huffman"], ["huffman"] * 4, ["stored"] * 8,  # 1.1
    "scales", 31, 32,  # 1.2: per-channel scales (scale_axis, scale_dtype)
]
KEYS = ["name", "dtype", "shape", "encoding", "nonzeros", "codebook_dtype", "codebook_size", "lane_size", "gap_bits",
        "entries", "parts", "data", "codebook", "indices", "gaps", "lane_bases", "kind", "offset", "length", "crc32",
        "tensor", "sections", "producer", "planes", "plane0", "plane1", "plane3", "plane7",
        "scale_axis", "scale_dtype", "scales"]
U64_VALUES = [0, 1, 2, 7, 8, 255, 256, 4096, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


# ---------------------------------------------------------------- take apart, put together
class File:
    """A file taken apart. ``deflated``: the header, metadata and graph are stored as raw DEFLATE
    streams (their plain bytes are kept here and deflated again by :func:`build`); ``offsets``:
    the header lists each section's offset (otherwise sections follow each other, aligned)."""

    def __init__(self, major, minor, header, payloads, deflated=False, offsets=True):
        self.major, self.minor, self.header, self.payloads = major, minor, header, payloads
        self.deflated, self.offsets = deflated, offsets

    @property
    def entries(self) -> list:
        e = self.header.get("sections")
        return e if isinstance(e, list) else []


def _alignment() -> int:
    try:  # follow the format as the library has it
        from dcformat.constants import ALIGNMENT as a
        return a
    except ImportError:
        return ALIGNMENT


def _zdict(minor: int) -> bytes | None:
    """The preset dictionary of a file of this minor version (1.4 and later), as the library has it."""
    try:
        from dcformat.constants import deflate_dict
    except ImportError:
        try:
            from dcformat.constants import DEFLATE_DICT, DICT_MINOR
        except ImportError:
            return None
        return DEFLATE_DICT if minor >= DICT_MINOR else None
    return deflate_dict(minor)


def _deflate(data: bytes, zdict: bytes | None = None) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, **({"zdict": zdict} if zdict else {}))  # as dcformat.container.deflate
    return c.compress(data) + c.flush()


def _inflate(data: bytes, zdict: bytes | None = None) -> bytes | None:
    d = zlib.decompressobj(-15, **({"zdict": zdict} if zdict else {}))
    try:
        out = d.decompress(data, 64 << 20)
    except zlib.error:
        return None
    return out if d.eof and not d.unused_data else None


def _deflated_kind(e) -> bool:
    return isinstance(e, dict) and e.get("kind") in ("metadata", "graph")


def parse(data: bytes) -> File | None:
    if len(data) < PREAMBLE.size or data[:8] != MAGIC:
        return None
    _, major, minor, hlen, _, _ = PREAMBLE.unpack(data[: PREAMBLE.size])
    if PREAMBLE.size + hlen > len(data):
        return None
    stored = bytes(data[PREAMBLE.size : PREAMBLE.size + hlen])
    deflated = not stored.startswith(b"{")
    zd = _zdict(minor)
    text = _inflate(stored, zd) if deflated else stored
    if text is None:
        return None
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
        return None
    offsets = any(isinstance(e, dict) and "offset" in e for e in header["sections"])
    payloads, end, align = [], PREAMBLE.size + hlen, _alignment()
    for e in header["sections"]:
        off = e.get("offset") if isinstance(e, dict) and offsets else _align(end, align)
        length = e.get("length") if isinstance(e, dict) else None
        if type(off) is int and type(length) is int and 0 <= off <= off + length <= len(data):
            p = bytes(data[off : off + length])
            end = off + length
            if deflated and _deflated_kind(e):
                p = _inflate(p, zd) if _inflate(p, zd) is not None else p
            payloads.append(p)
        else:
            payloads.append(b"")
    return File(major, minor, header, payloads, deflated, offsets)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def build(f: File, *, fix_offsets=True, fix_lengths=True, fix_crcs=True) -> bytes:
    """Lay the file out again: offsets, lengths and CRCs recomputed unless told otherwise."""
    align = _alignment()
    entries0 = f.header.get("sections") if isinstance(f.header.get("sections"), list) else []
    zd = _zdict(f.minor & 0xFFFF)
    stored = [_deflate(p, zd) if f.deflated and _deflated_kind(e) else p for e, p in zip(entries0, f.payloads)]
    hlen = 0
    for _ in range(32):
        h = copy.deepcopy(f.header)
        pos = PREAMBLE.size + hlen
        places = []
        entries = h.get("sections") if isinstance(h.get("sections"), list) else []
        for e, p in zip(entries, stored):
            pos = _align(pos, align)
            places.append(pos)
            if isinstance(e, dict):
                if fix_offsets and f.offsets:
                    e["offset"] = pos
                if fix_lengths:
                    e["length"] = len(p)
                if fix_crcs:
                    e["crc32"] = zlib.crc32(p)
            pos += len(p)
        try:
            hb = json.dumps(h, separators=(",", ":")).encode("utf-8")
        except (ValueError, RecursionError):
            hb = b"{}"
        if f.deflated:
            hb = _deflate(hb, zd)
        if len(hb) == hlen:  # offsets depend on the header's length: iterate to the fixed point
            break
        hlen = len(hb)
    out = bytearray(pos)
    head = struct.pack("<8sHHII", MAGIC, f.major & 0xFFFF, f.minor & 0xFFFF, len(hb), zlib.crc32(hb))
    out[: PREAMBLE.size] = head + struct.pack("<I", zlib.crc32(head))
    out[PREAMBLE.size : PREAMBLE.size + len(hb)] = hb
    for at, p in zip(places, stored):
        out[at : at + len(p)] = p
    return bytes(out)


def split_parts(desc: dict, payload: bytes) -> dict[str, bytes] | None:
    parts = desc.get("parts") if isinstance(desc, dict) else None
    if not isinstance(parts, dict) or not all(type(v) is int and v >= 0 for v in parts.values()):
        return None
    out, pos = {}, 0
    for name, length in parts.items():
        start = _align(pos, PART_ALIGNMENT)
        out[name] = payload[start : start + length]
        pos = start + length
    return out


def join_parts(parts: dict[str, bytes]) -> tuple[bytes, dict[str, int]]:
    out = bytearray()
    for p in parts.values():
        out += bytes(_align(len(out), PART_ALIGNMENT) - len(out))
        out += p
    return bytes(out), {k: len(v) for k, v in parts.items()}


# ---------------------------------------------------------------- byte-level mutation
def mutate_bytes(rng: random.Random, data: bytes, max_size: int) -> bytes:
    """libFuzzer's mutator when running under atheris; a small one of our own otherwise."""
    if atheris is not None and _in_fuzzer and rng.random() < 0.7:
        return atheris.Mutate(data, max(max_size, 1))
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
        op = rng.randrange(8)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8, 16])))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            del b[i : i + rng.choice([1, 2, 4, 8, 64])]
        elif op == 4 and len(b) >= 8:
            i = rng.randrange(len(b) - 7) & ~7 if rng.random() < 0.7 else rng.randrange(len(b) - 7)
            b[i : i + 8] = rng.choice(U64_VALUES).to_bytes(8, "little")
        elif op == 5 and len(b) >= 4:
            i = rng.randrange(len(b) - 3)
            b[i : i + 4] = rng.choice([0, 1, 0xFFFF, 2**31, 2**32 - 1, rng.randrange(2**32)]).to_bytes(4, "little")
        elif op == 6 and len(b) >= 2:
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            n = rng.randint(1, 32)
            b[j : j + n] = b[i : i + n]
        elif op == 7 and b:
            i = rng.randrange(len(b))
            b[i : i + rng.randint(1, 16)] = bytes(rng.randint(1, 16))  # zero a run
    return bytes(b[:max_size])


# ---------------------------------------------------------------- structure-aware mutation
def _paths(obj, prefix=()):
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _new_value(rng: random.Random, old):
    if type(old) is int and rng.random() < 0.6:
        return rng.choice([old + 1, old - 1, old * 2, old // 2, old + 8, old - 8, old + 64, -old, old << 8,
                           rng.choice(INTERESTING_INTS)])
    if isinstance(old, list) and rng.random() < 0.5:
        new = list(old)
        if new and rng.random() < 0.5:
            del new[rng.randrange(len(new))]
        else:
            new.insert(rng.randrange(len(new) + 1), rng.choice(INTERESTING_VALUES))
        return new
    if isinstance(old, dict) and rng.random() < 0.6:
        new = dict(old)
        if new and rng.random() < 0.5:
            del new[rng.choice(list(new))]
        else:
            new[rng.choice(KEYS)] = rng.choice(INTERESTING_VALUES)
        return new
    return rng.choice(INTERESTING_VALUES)


def _edit_header(rng: random.Random, f: File) -> None:
    paths = [p for p, _ in _paths(f.header) if p]
    if not paths:
        return
    # mostly inside tensor descriptors, where the rules are
    inner = [p for p in paths if "tensor" in p]
    where = rng.choice(inner if inner and rng.random() < 0.7 else paths)
    node = f.header
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = _new_value(rng, node[where[-1]])


def _tensor_indices(f: File) -> list[int]:
    return [i for i, e in enumerate(f.entries) if isinstance(e, dict) and isinstance(e.get("tensor"), dict)]


def _edit_part(rng: random.Random, f: File) -> None:
    """Change one part of a tensor and keep the descriptor's part lengths consistent."""
    idx = _tensor_indices(f)
    if not idx:
        return
    i = rng.choice(idx)
    desc = f.entries[i]["tensor"]
    parts = split_parts(desc, f.payloads[i])
    if not parts:
        return
    name = rng.choice(list(parts))
    p = bytearray(parts[name])
    op = rng.randrange(4)
    if op == 0 and p:  # a code length (the first bytes of a stream part)
        p[rng.randrange(min(len(p), 258))] = rng.choice([0, 1, 2, 3, 8, 14, 15, 16, 255])
    elif op == 1 and len(p) >= 8:  # an aligned u64: lane offsets, lane bases
        at = rng.randrange(len(p) // 8) * 8
        p[at : at + 8] = rng.choice(U64_VALUES + [int.from_bytes(p[at : at + 8], "little") + rng.choice([-1, 1, 8])
                                                   & (2**64 - 1)]).to_bytes(8, "little")
    else:
        p = bytearray(mutate_bytes(rng, bytes(p), max(len(p) + 64, 1)))
    parts[name] = bytes(p)
    f.payloads[i], lengths = join_parts(parts)
    if rng.random() < 0.9:
        desc["parts"] = lengths


def _edit_sections(rng: random.Random, f: File, pool) -> None:
    n = len(f.entries)
    op = rng.randrange(4)
    if op == 0 and n:  # duplicate one
        i = rng.randrange(n)
        f.entries.insert(i, copy.deepcopy(f.entries[i]))
        f.payloads.insert(i, f.payloads[i])
    elif op == 1 and n:  # drop one
        i = rng.randrange(n)
        del f.entries[i], f.payloads[i]
    elif op == 2 and n >= 2:  # swap two
        i, j = rng.randrange(n), rng.randrange(n)
        f.entries[i], f.entries[j] = f.entries[j], f.entries[i]
        f.payloads[i], f.payloads[j] = f.payloads[j], f.payloads[i]
    elif op == 3 and pool:  # bring one in from another file
        other = parse(rng.choice(pool))
        if other is not None and other.entries:
            j, at = rng.randrange(len(other.entries)), rng.randrange(n + 1)
            f.entries.insert(at, other.entries[j])
            f.payloads.insert(at, other.payloads[j])


def mutate_with(rng: random.Random, data: bytes, max_size: int, pool=None) -> bytes:
    """One mutation of ``data`` (at most ``max_size`` bytes); ``pool``: other inputs to splice from."""
    f = parse(data) if rng.random() < 0.8 else None
    if f is None:
        return mutate_bytes(rng, data, max_size)
    op = rng.random()
    if op < 0.35:
        _edit_header(rng, f)
    elif op < 0.75:
        _edit_part(rng, f)
    elif op < 0.85:
        i = rng.randrange(len(f.payloads)) if f.payloads else None
        if i is not None:
            f.payloads[i] = mutate_bytes(rng, f.payloads[i], len(f.payloads[i]) + 64)
    elif op < 0.95:
        _edit_sections(rng, f, pool)
    else:
        f.major, f.minor = rng.choice([(1, 0), (1, 1), (1, 65535), (0, 0), (2, 0), (65535, 0)])
    r = rng.random()
    out = build(f, fix_offsets=r > 0.03, fix_lengths=r > 0.06 or r < 0.03, fix_crcs=r > 0.1 or r < 0.06)
    return out[:max_size]


_in_fuzzer = False


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    global _in_fuzzer
    _in_fuzzer = True
    return mutate_with(random.Random(seed), data, max_size)
