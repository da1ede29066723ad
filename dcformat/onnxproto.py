"""ONNX's protobuf classes (ModelProto, TensorProto ...) without the cost of ``import onnx``.

Importing the ``onnx`` package takes 0.2 s, and with ml_dtypes (which onnx.helper imports)
about 1.5 s on a 2-core machine; the runtime path only needs the message classes, which are
in the one generated module ``onnx/onnx_ml_pb2.py``. That module depends on protobuf alone, so
when ``onnx`` is not imported yet it is executed here from the installed package's file, under
a private module name. Its descriptors go into protobuf's default pool, where a later
``import onnx`` finds the same file (an identical file added twice is accepted) and gets the
same classes: ``onnxproto.ModelProto is onnx.ModelProto`` either way (tests/test_onnxproto.py).

Also here: ONNX's numbers the runtime path uses (TensorProto.DataType, AttributeProto.Type,
DataLocation), checked against the onnx package by the tests.
"""

from __future__ import annotations

import sys

# TensorProto.DataType -> the format's dtype name (constants.DTYPES), for the types the format holds
ONNX_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
ONNX_DTYPE_OF = {v: k for k, v in ONNX_DTYPE_NAMES.items()}
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
DEFAULT = 0  # TensorProto.DataLocation.DEFAULT
# AttributeProto.AttributeType
ATTR_TENSOR, ATTR_GRAPH, ATTR_TENSORS, ATTR_GRAPHS = 4, 5, 9, 10

_pb2 = None


def pb2():
    """The onnx_ml_pb2 module: onnx's own if onnx is imported, else loaded from its file."""
    global _pb2
    if _pb2 is not None:
        return _pb2
    if "onnx" in sys.modules:
        from onnx import onnx_ml_pb2

        _pb2 = onnx_ml_pb2
        return _pb2
    import importlib.util
    import os

    spec = importlib.util.find_spec("onnx")  # finds the package without importing it
    path = os.path.join(spec.submodule_search_locations[0], "onnx_ml_pb2.py") if spec and spec.submodule_search_locations else None
    if path is None or not os.path.isfile(path):  # an unusual install: pay for the package
        from onnx import onnx_ml_pb2

        _pb2 = onnx_ml_pb2
        return _pb2
    name = "dcformat._onnx_ml_pb2"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    sys.modules[name] = module
    _pb2 = module
    return module


def ModelProto():  # noqa: N802 - the class's name
    return pb2().ModelProto()


def np_dtype_to_onnx(dtype) -> int:
    """The TensorProto data_type of a numpy dtype the format holds."""
    from .constants import dtype_name

    return ONNX_DTYPE_OF[dtype_name(dtype)]
