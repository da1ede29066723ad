"""The numbers of the .dcz format, in one place.

spec/FORMAT.md and this module say the same thing; tests/test_spec.py checks that
every constant quoted in the spec matches the value here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# ---------------------------------------------------------------- container
MAGIC = b"\x89DCZ\r\n\x1a\n"  # 8 bytes, PNG-style: catches text-mode and 7-bit mangling
VERSION_MAJOR = 1  # bumped when a v1 reader could misread a new file
VERSION_MINOR = 4  # bumped when only optional things are added (1.1: the float-planes encoding; 1.2: per-channel scales; 1.3: lzma;
# 1.4: the preset DEFLATE dictionary)
PREAMBLE_SIZE = 24  # magic(8) major(u16) minor(u16) header_len(u32) header_crc(u32) preamble_crc(u32)
ALIGNMENT = 8  # every section starts at a multiple of this
PART_ALIGNMENT = 8  # every part inside a tensor section starts at a multiple of this
# The header, the metadata section and the graph section are stored as raw DEFLATE
# streams (RFC 1951, no zlib or gzip wrapper), written at this level.
DEFLATE_LEVEL = 9
# 1.4: in a file of minor version >= DICT_MINOR the header, the metadata and the graph are raw DEFLATE
# streams with the preset dictionary DEFLATE_DICT (RFC 1950's FDICT: the dictionary is the history the
# stream's first matches may refer to; zlib's deflateSetDictionary / inflateSetDictionary). It holds
# what every small file repeats: the JSON keys of the section table and of dcconvert's metadata, and a
# serialized ONNX ModelProto with typical nodes, attributes and external-data references (spec 2.2, 3).
DICT_MINOR = 4
_DICT_METADATA = (
    b'{"fidelity":{"schema":1,"measured":true,"metric":"rel_l2","metric_text":"relative L2 error ||y - y\'|| / ||y|| '
    b'over all calibration samples, worst output","calibration":{"source":"synthetic","synthetic":true,"seed":0,'
    b'"samples":16,"inputs":{"input":{"dtype":"float32","shape":[16,]}}},"budget":null,"within_budget":null,'
    b'"max_rel_l2":0.0,"worst_output":"","min_cosine":0.99,"outputs":{"":{"shape":[1,],"shape_mismatch":false,'
    b'"samples":16,"rel_l2":0.0,"cosine_mean":0.99,"cosine_min":0.99,"max_abs":0.0,"top1":1.0,"top1_positions":16,'
    b'"nonfinite":0}},"warning":false},"producer":"dcconvert (dcz 0.1.0)","settings":{"sparsity":0.0,'
    b'"threshold_std":null,"threshold":null,"prune_neurons":null,"bits":null,"ecvq":0.5,"init":"linear","min_size":0,'
    b'"lossless":false,"seed":0,"default_bits":{"conv":8,"fc":5,"embedding":8},"default_sparsity":{"conv":0.3,'
    b'"fc":0.5,"embedding":0.0},"compensate":true,"channel_scales":"auto","role":{"*bias":"fc"}},"source":{"file":".onnx",'
    b'"kind":"onnx","sha256":"","bytes":}}'
)
_DICT_ONNX = bytes.fromhex(  # onnx.helper: Conv, Relu, MaxPool, BatchNormalization, Add, GlobalAveragePool, Flatten, Reshape, MatMul, Gemm
    "080812077079746f7263681a06322e31332e303af7050a84010a01780a0c636f6e76312e7765696768740a0a636f6e76312e"
    "626961731201792204436f6e762a120a0964696c6174696f6e7340014001a001072a0c0a0567726f75701801a001022a150a"
    "0c6b65726e656c5f736861706540034003a001072a110a04706164734001400140014001a001072a100a0773747269646573"
    "40014001a001070a0c0a017912017a220452656c750a710a017a12017022074d6178506f6f6c2a100a096365696c5f6d6f64"
    "651800a001022a120a0964696c6174696f6e7340014001a001072a150a0c6b65726e656c5f736861706540024002a001072a"
    "110a04706164734000400040004000a001072a100a077374726964657340024002a001070a4d0a01700a01730a01620a016d"
    "0a0176120171221242617463684e6f726d616c697a6174696f6e2a110a07657073696c6f6e15acc52737a001012a120a086d"
    "6f6d656e74756d156666663fa001010a0e0a01710a017012017222034164640a190a01721201672211476c6f62616c417665"
    "72616765506f6f6c0a1c0a01671201662207466c617474656e2a0b0a04617869731801a001020a170a01660a057368617065"
    "120266322207526573686170650a130a0266320a017712026d6d22064d61744d756c0a570a01660a0a6663312e7765696768"
    "740a086663312e6269617312066c6f67697473220447656d6d2a0f0a05616c706861150000803fa001012a0e0a0462657461"
    "150000803fa001012a0d0a067472616e73421801a00102120a6d61696e5f67726170682a4308400803080308031001420c63"
    "6f6e76312e7765696768746a0f0a086c6f636174696f6e120364637a6a160a0674656e736f72120c636f6e76312e77656967"
    "687470012a35080a100142086663312e626961736a0f0a086c6f636174696f6e120364637a6a120a0674656e736f72120866"
    "63312e6269617370015a260a05696e707574121d0a1b080112170a07120562617463680a0208030a0308e0010a0308e00162"
    "1e0a066f757470757412140a120801120e0a07120562617463680a0308e80742040a001011"
)
_DICT_HEADER = (
    b'"codebook_dtype":"float16","scale_axis":0,"scale_dtype":"float32","scales":{"kind":"tensor","length":,"crc32":,"tensor":{"name":"",'
    b'"dtype":"float16","shape":[],"encoding":"float-planes","nonzeros":,"lane_size":16384,"planes":["huffman",'
    b'"stored","stored","stored"],"parts":{"plane0":,"plane1":,"plane2":,"plane3":}}"encoding":"lzma",'
    b'{"sections":[{"kind":"metadata","length":,"crc32":},{"kind":"graph","length":,"crc32":},{"kind":"padding",'
    b'"length":,{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32","shape":[],"encoding":"raw",'
    b'"nonzeros":,"parts":{"data":}}},{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32",'
    b'"shape":[],"encoding":"codebook-dense","nonzeros":,"codebook_dtype":"float32","codebook_size":,"lane_size":16384,'
    b'"parts":{"codebook":,"indices":}}},{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32",'
    b'"shape":[],"encoding":"codebook-sparse","nonzeros":,"codebook_dtype":"float32","codebook_size":,"lane_size":16384,'
    b'"gap_bits":8,"entries":,"parts":{"codebook":,"lane_bases":8,"gaps":,"indices":}}}.weight",.bias",'
)
DEFLATE_DICT = _DICT_METADATA + _DICT_ONNX + _DICT_HEADER  # the most common (the header's) last: the shortest distances
DEFLATE_DICT_SHA256 = "42ffb04b9b77e144b5777dd10ef949f8d1278e2da5264e0c10cc6dec213d5e0f"  # of its 2,868 bytes

SECTION_METADATA = "metadata"
SECTION_GRAPH = "graph"
SECTION_TENSOR = "tensor"
SECTION_PADDING = "padding"  # zeros that buy expansion budget (spec 5.4)
SECTION_KINDS = (SECTION_METADATA, SECTION_GRAPH, SECTION_TENSOR, SECTION_PADDING)

# ---------------------------------------------------------------- encodings
ENC_RAW = "raw"
ENC_CB_DENSE = "codebook-dense"
ENC_CB_SPARSE = "codebook-sparse"
ENC_FLOAT_PLANES = "float-planes"  # 1.1: byte planes of floats, each stored or Huffman-coded
ENC_LZMA = "lzma"  # 1.3: the raw bytes as one raw LZMA2 stream (xz's LZMA2 filter, no container)
ENCODINGS = (ENC_RAW, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, ENC_LZMA)
# The first minor version that defines each encoding: a writer writes the highest one its
# tensors need, so a file that uses nothing new stays a 1.0 file (spec 2.2).
ENCODING_MINOR = {ENC_RAW: 0, ENC_CB_DENSE: 0, ENC_CB_SPARSE: 0, ENC_FLOAT_PLANES: 1, ENC_LZMA: 3}
# 1.2: a codebook-coded tensor may carry one scale per slice along one axis (spec 7.5):
# element = scale[c] * codebook[index]; the record then has a "scales" part right after "codebook".
SCALES_MINOR = 2

# Parts of a tensor section, in the order they are laid out.
PARTS = {
    ENC_RAW: ("data",),
    ENC_CB_DENSE: ("codebook", "indices"),
    ENC_CB_SPARSE: ("codebook", "lane_bases", "gaps", "indices"),
    ENC_FLOAT_PLANES: tuple(f"plane{k}" for k in range(8)),  # the first itemsize(dtype) of these: parts_of()
    ENC_LZMA: ("data",),
}

# the parts of a codebook-coded tensor with per-channel scales (1.2, spec 7.5): "scales" after "codebook"
SCALED_PARTS = {
    ENC_CB_DENSE: ("codebook", "scales", "indices"),
    ENC_CB_SPARSE: ("codebook", "scales", "lane_bases", "gaps", "indices"),
}

MAX_CODEBOOK = 256  # entries in a codebook
MIN_GAP_BITS = 1
MAX_GAP_BITS = 8

# float-planes: each byte plane is "stored" (N bytes) or "huffman" (a stream over 256 symbols)
PLANE_STORED = "stored"
PLANE_HUFFMAN = "huffman"
PLANE_MODES = (PLANE_STORED, PLANE_HUFFMAN)
PLANE_ALPHABET = 256
# The reference encoder limits a plane's codes to this many bits (a writer's choice, not a rule):
# the decode table has 2^this u16 entries, 4 KiB, which stays in L1 cache (2^15 entries do not),
# for about 0.02% more bytes than 15-bit codes (measured on PP-OCRv4 det/rec and a transformer).
PLANE_CODE_LENGTH = 11

# lzma (1.3): a decoder decodes the stream with an LZMA2 dictionary of max(LZMA_MIN_DICT, decoded bytes)
# bytes (every match refers to bytes already decoded), so its memory follows the declared size.
LZMA_MIN_DICT = 1 << 12  # liblzma's smallest dictionary
LZMA_MAX_BYTES = 1 << 30  # decoded bytes of an lzma tensor, at most

# ---------------------------------------------------------------- Huffman streams
MAX_CODE_LENGTH = 15  # bits; one table lookup decodes a symbol
LANE_OFFSET_BYTES = 8  # u64 per lane in a stream's lane table
LANE_BASE_BYTES = 8  # u64 per lane in a sparse tensor's lane_bases part
MIN_LANE_SIZE = 1 << 8  # symbols per lane: a power of two in [MIN, MAX]
MAX_LANE_SIZE = 1 << 24
DEFAULT_LANE_SIZE = 1 << 14

# ---------------------------------------------------------------- limits
MAX_HEADER_BYTES = 64 << 20  # of JSON text, after inflating the stored header
MAX_SECTIONS = 1 << 20
MAX_RANK = 32
MAX_NAME_BYTES = 4096
MAX_ELEMENTS = 1 << 40  # per tensor
# The declared decoded bytes of all tensors together may not exceed
# MAX_EXPANSION * file size + EXPANSION_SLACK: a reader never allocates more.
MAX_EXPANSION = 1024
EXPANSION_SLACK = 16 << 20
# Parsing takes memory: Python's json up to ~27 bytes per byte of JSON text (lists of empty
# lists), protobuf up to ~100 per byte of ONNX graph (empty AttributeProtos). The inflated
# header and metadata are held to (expansion bound) / JSON_PARSE_FACTOR bytes, the inflated
# graph to (expansion bound) / GRAPH_PARSE_FACTOR: a small file cannot parse into gigabytes.
JSON_PARSE_FACTOR = 32
GRAPH_PARSE_FACTOR = 128
# Counts, which cost time and memory out of proportion to their bytes (an empty NodeProto is 2
# bytes of graph and ~1 kB in ONNX Runtime; a header entry ~20 us to check): a file's sections
# times SECTION_COST, and its graph's objects (graphs, nodes, node inputs and outputs,
# attributes, tensors, value infos, functions; FORMAT.md section 10) times GRAPH_OBJECT_COST,
# are each at most its expansion bound.
SECTION_COST = 16384
GRAPH_OBJECT_COST = 4096


def expansion_bound(file_size: int) -> int:
    """MAX_EXPANSION * file_size + EXPANSION_SLACK: the most bytes a reader allocates for a file."""
    return MAX_EXPANSION * file_size + EXPANSION_SLACK

# ---------------------------------------------------------------- dtypes
# name -> numpy dtype; all little-endian. bfloat16's dtype comes from ml_dtypes (installed with
# onnx), imported on first use of that dtype only: importing it costs about a second.
_EAGER_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"),
    "uint32": np.dtype("<u4"),
    "uint16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


def _has_ml_dtypes() -> bool:
    import importlib.util

    return importlib.util.find_spec("ml_dtypes") is not None


class _DtypeTable(Mapping):
    """The format's dtype names -> numpy dtypes; bfloat16 imports ml_dtypes when first looked up."""

    def __init__(self):
        self._d = dict(_EAGER_DTYPES)
        self._names = list(_EAGER_DTYPES) + (["bfloat16"] if _has_ml_dtypes() else [])

    def __getitem__(self, name):
        if name == "bfloat16" and name not in self._d and name in self._names:
            import ml_dtypes

            self._d[name] = np.dtype(ml_dtypes.bfloat16)
        return self._d[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._names


DTYPES: Mapping[str, np.dtype] = _DtypeTable()

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")  # may use codebook encodings
CODEBOOK_DTYPES = ("float32", "float16")
SCALE_DTYPES = ("float32", "float16")  # of per-channel scales (1.2)
ITEMSIZE = {"bfloat16": 2, **{k: v.itemsize for k, v in _EAGER_DTYPES.items()}}

# bit-pattern (unsigned) dtype of each float dtype, used by the decode kernels
UINT_OF_SIZE = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def parts_of(encoding: str, dtype: str, scaled: bool = False) -> tuple[str, ...]:
    """The part names of a tensor of this encoding and dtype (with per-channel scales or not), in layout order."""
    if encoding == ENC_FLOAT_PLANES:
        return PARTS[encoding][: ITEMSIZE[dtype]]
    if scaled and encoding in SCALED_PARTS:
        return SCALED_PARTS[encoding]
    return PARTS[encoding]


def dtype_name(dt) -> str:
    """The format's name of a numpy dtype (KeyError-free: raises ValueError)."""
    dt = np.dtype(dt)
    if dt.name == "bfloat16" and "bfloat16" in DTYPES and dt == DTYPES["bfloat16"]:  # an ml_dtypes dtype
        return "bfloat16"
    for name, d in _EAGER_DTYPES.items():
        if d == dt.newbyteorder("<") or d == dt:
            return name
    raise ValueError(f"dtype {dt} is not supported by .dcz")

# ---------------------------------------------------------------- graph references
# A TensorProto in the graph section refers to a tensor record by
# data_location = EXTERNAL and external_data {GRAPH_LOCATION_KEY: GRAPH_LOCATION, GRAPH_TENSOR_KEY: record name}.
GRAPH_LOCATION_KEY = "location"
GRAPH_LOCATION = "dcz"
GRAPH_TENSOR_KEY = "tensor"
