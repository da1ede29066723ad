"""Generate the preset DEFLATE dictionary of format 1.5 (DEFLATE_DICT_15, spec/FORMAT.md Appendix B).

    python tools/gen_dictionary.py            # print the hex, 48 bytes a line, and the SHA-256
    python tools/gen_dictionary.py --check    # exit 1 unless dcformat.constants holds these bytes
    python tools/gen_dictionary.py --out F    # write the raw bytes to F

The dictionary is the history every header, metadata and graph stream of a 1.5 file starts from, so
its content is what small files repeat, in the form the current writers emit (issue 16). Three pieces,
in this order (the most common last: the nearest, the shortest distances):

1. dcconvert's metadata JSON (fidelity schema 2 with its defaults left out, the settings dcconvert
   stores, the source), in the writer's key order, with typical values kept and the model-specific
   ones (numbers, names) blanked; before it, the settings object of a run with one value per setting;
2. a serialized ONNX ModelProto of a generic small CNN in the form dcconvert writes it
   (converters.compress.compact_graph: node names and doc strings cleared, values named a, b, ...):
   a Constant node with an int64 axes tensor, Unsqueeze, Conv, BatchNormalization, Relu, MaxPool,
   Add, GlobalAveragePool, Flatten, Reshape, MatMul, Gemm, Softmax with their usual attributes, and
   initializers that refer to tensor records (FORMAT.md 5.2);
3. header JSON: section entries of metadata and graph, and tensor entries of every encoding as
   dcformat.records.TensorInfo.descriptor() writes them (codebook-dense and -sparse with float16
   codebooks last, then raw; float-planes, lzma and per-channel scales further back), numbers blanked.

Only generic names are used (conv1, bn1, fc, input, output): no benchmark model's graph or bytes.
Deterministic: the same bytes on every run (onnx's deterministic serialization, fixed dicts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLANK = "\x00"  # a value to blank: dumped as "\u0000", then removed with its quotes


def _json(obj) -> bytes:
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))  # as dcformat.container.dump_json
    return text.replace('"\\u0000"', "").encode("ascii")


def metadata_piece() -> bytes:
    """dcconvert's metadata (converters/cli.py), top-level keys sorted as dcformat.write stores them."""
    fidelity = {"schema": 2, "measured": True, "metric": "rel_l2",
                "calibration": {"source": "synthetic", "synthetic": True, "seed": 0, "samples": 16,
                                "inputs": {"input": {"dtype": "float32", "shape": [16, BLANK]}}},
                "max_rel_l2": 0.0, "worst_output": "output",
                "outputs": {"output": {"shape": [1, BLANK], "rel_l2": 0.0, "cosine_mean": 0.99, "cosine_min": 0.99,
                                       "max_abs": BLANK, "top1": 1.0, "top1_positions": 16}},
                "warning": False}
    def settings(sparsity, bits, ecvq, min_size, compensate, **more):  # converters.cli.stored_settings' order
        return {"sparsity": sparsity, "bits": bits, "ecvq": ecvq, "init": "linear", "min_size": min_size,
                "lossless": False, "seed": 0, "default_bits": {"conv": 8, "fc": 5, "embedding": 8},
                "default_sparsity": {"conv": 0.3, "fc": 0.5, "embedding": 0.0},
                "compensate": compensate, "channel_scales": "auto", **more}

    # settings of one value each (dcconvert's defaults), further back; then per-layer ones in the full text
    plain = _json({"settings": settings(0.5, 4, 0.5, 512, False)})[1:-1] + b',"warning":true},'
    per_layer = settings(0.0, {"default": 3, ".weight": 4}, {"default": 4.0, ".weight": 0.5, "*bias": 0.0}, 0, True,
                         role={"*bias": "fc"})
    source = {"file": ".onnx", "kind": "onnx", "sha256": "", "bytes": BLANK}
    meta = {"fidelity": fidelity, "producer": "dcconvert (dcz 0.1.0)", "settings": per_layer, "source": source}
    return plain + _json(dict(sorted(meta.items())))


def onnx_piece() -> bytes:
    """A generic small CNN, compacted as dcconvert compacts graphs."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from converters.compress import compact_graph

    nodes, inits = [], []

    def record(name, dims):  # an initializer that refers to a tensor record (FORMAT.md 5.2)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "dcz"), ("tensor", name)):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        return name

    def node(op, inputs, **attrs):
        out = f"v{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"/{op}_{len(nodes)}", **attrs))
        return out

    axes = numpy_helper.from_array(np.array([1], dtype=np.int64))
    a = node("Constant", [], value=axes)
    x = node("Unsqueeze", ["input", a])
    x = node("Conv", [x, record("conv1.weight", [16, 1, 3, 3]), record("conv1.bias", [16])],
             dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    x = node("BatchNormalization", [x] + [record(f"bn1.{k}", [16]) for k in ("weight", "bias", "running_mean",
                                                                             "running_var")],
             epsilon=1e-5, momentum=0.9)
    x = node("Relu", [x])
    x = node("MaxPool", [x], ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2])
    y = node("Conv", [x, record("conv2.weight", [16, 16, 5, 5]), record("conv2.bias", [16])],
             dilations=[1, 1], group=1, kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1])
    x = node("Add", [x, y])
    x = node("Relu", [x])
    x = node("GlobalAveragePool", [x])
    x = node("Flatten", [x], axis=1)
    x = node("Reshape", [x, record("shape", [2])])
    x = node("MatMul", [x, record("fc1.weight", [16, 16])])
    x = node("Gemm", [x, record("fc.weight", [10, 16]), record("fc.bias", [10])], alpha=1.0, beta=1.0, transB=1)
    nodes.append(helper.make_node("Softmax", [x], ["output"], name="/Softmax", axis=1))
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, producer_name="pytorch", producer_version="2.13.0",
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return compact_graph(model).SerializeToString(deterministic=True)


def header_piece() -> bytes:
    """Section entries as dcformat's writer emits them (container.Section.entry, records.TensorInfo.descriptor)."""
    from dcformat.records import TensorInfo

    def new_info(name, dtype, shape, encoding, parts, **kw):  # the descriptor only: its numbers are blanked
        return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), encoding=encoding, parts=parts, **kw)

    def entry(kind, info=None):
        d = {"kind": kind, "length": BLANK, "crc32": BLANK}
        if info is not None:
            desc = info.descriptor()
            desc["name"] = ""
            desc["shape"] = []
            desc["nonzeros"] = BLANK
            for k in ("codebook_size", "entries"):
                if k in desc:
                    desc[k] = BLANK
            desc["parts"] = {k: BLANK for k in desc["parts"]}
            d["tensor"] = desc
        return _json(d)

    cb = {"codebook_dtype": "float16", "lane_size": 16384}
    pieces = [
        entry("tensor", new_info("x", "float32", [64], "lzma", {"data": 1})),
        entry("tensor", new_info("x", "float16", [64], "float-planes", {f"plane{k}": 64 for k in range(2)},
                                 lane_size=16384, planes=("huffman", "stored"))),
        entry("tensor", new_info("x", "float32", [64], "float-planes", {f"plane{k}": 64 for k in range(4)},
                                 lane_size=16384, planes=("stored", "stored", "huffman", "huffman"))),
        entry("tensor", new_info("x", "float32", [64], "codebook-dense", {"codebook": 2, "scales": 4, "indices": 1},
                                 codebook_size=2, scale_axis=0, scale_dtype="float16", **cb)),
        entry("padding"),
        entry("tensor", new_info("x", "float32", [64], "raw", {"data": 256})),
        entry("tensor", new_info("x", "float32", [64], "codebook-sparse",
                                 {"codebook": 2, "lane_bases": 8, "gaps": 1, "indices": 1},
                                 codebook_size=2, gap_bits=8, entries=1, **cb)),
        entry("tensor", new_info("x", "float32", [64], "codebook-dense", {"codebook": 2, "indices": 1},
                                 codebook_size=2, **cb)),
    ]
    head = b'{"sections":[' + entry("metadata") + b"," + entry("graph") + b","
    # the lane_bases part of a one-lane sparse tensor is always 8 bytes: keep that number
    body = b",".join(pieces).replace(b'"lane_bases":,', b'"lane_bases":8,')
    return b'.weight",.bias",' + head + body + b"]}"


def dictionary() -> bytes:
    return metadata_piece() + onnx_piece() + header_piece()


def hex_lines(data: bytes, width: int = 48) -> str:
    return "\n".join(data[i : i + width].hex() for i in range(0, len(data), width))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 unless dcformat.constants.DEFLATE_DICT_15 equals it")
    ap.add_argument("--out", help="write the raw bytes here")
    args = ap.parse_args(argv)
    d = dictionary()
    if args.out:
        Path(args.out).write_bytes(d)
    if args.check:
        from dcformat.constants import DEFLATE_DICT_15
        ok = d == DEFLATE_DICT_15
        print("dcformat.constants.DEFLATE_DICT_15 " + ("matches" if ok else "DIFFERS from") + " the generated dictionary")
        return 0 if ok else 1
    pieces = (metadata_piece(), onnx_piece(), header_piece())
    print(hex_lines(d))
    print(f"{len(d):,} bytes ({' + '.join(f'{len(p):,}' for p in pieces)}), sha256 {hashlib.sha256(d).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
