"""dcformat: the .dcz compressed-model format -- encoders, writer, lazy reader.

Needs numpy, numba and onnx (imported when first used); never torch. The format is specified in spec/FORMAT.md.

    >>> import numpy as np, dcformat
    >>> w = np.where(np.arange(1000) % 10 == 0, 0.5, 0.0).astype(np.float32).reshape(10, 100)
    >>> t = dcformat.encode("w", w)            # smallest exact encoding
    >>> t.encoding
    'codebook-sparse'
"""

from __future__ import annotations

import sys
import types

from .errors import (
    ChecksumError,
    DczError,
    EncodeError,
    FormatError,
    HuffmanError,
    LimitError,
    TensorError,
    VersionError,
)

# The rest is imported on first use (PEP 562), so that ``import dcformat`` -- and every
# command's --help -- does not pay for numba, onnx and onnxruntime it may never need.
_LAZY = {
    "encode": "encode", "encode_raw": "encode", "encode_codebook": "encode", "encode_float_planes": "encode",
    "encode_lzma": "encode", "EncodedTensor": "encode", "estimate_codebook_bytes": "encode", "estimate_float_planes_bytes": "encode", "CodebookEstimate": "encode",
    "codebook_values": "encode",
    "DczReader": "reader", "open": "reader", "TensorInfo": "records", "write": "writer",
    "InferenceSession": "runtime", "ProviderError": "runtime", "load_weights": "runtime", "to_onnx": "runtime",
}


def __getattr__(name):
    import importlib

    if name == "FORMAT_VERSION":
        from .constants import VERSION_MAJOR, VERSION_MINOR

        value = (VERSION_MAJOR, VERSION_MINOR)
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in ("graph", "reader", "writer", "runtime", "encode", "records", "inspect", "kernels"):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``dcformat.encode`` stays the function even after the submodule of that name is imported
    (the import system sets the submodule as an attribute of its package)."""

    @property
    def encode(self):
        from .encode import encode

        return encode

    @encode.setter
    def encode(self, value):
        pass


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "open", "write", "to_onnx", "load_weights", "InferenceSession", "encode", "encode_raw", "encode_codebook", "encode_float_planes",
    "encode_lzma", "estimate_codebook_bytes", "estimate_float_planes_bytes", "CodebookEstimate", "codebook_values",
    "DczReader", "EncodedTensor", "TensorInfo",
    "DczError", "ProviderError", "FormatError", "VersionError", "ChecksumError", "LimitError", "TensorError", "HuffmanError", "EncodeError",
    "FORMAT_VERSION", "__version__",
]
