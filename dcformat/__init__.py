"""dcformat: the .dcz compressed-model format -- encoders, writer, memory-mapped reader.

Needs numpy, numba and onnx; never torch. The format is specified in spec/FORMAT.md.

    >>> import numpy as np, dcformat
    >>> w = np.where(np.arange(12) % 3 == 0, 0.5, 0.0).astype(np.float32).reshape(3, 4)
    >>> t = dcformat.encode("w", w)            # smallest exact encoding
    >>> t.encoding
    'codebook-sparse'
"""

from __future__ import annotations

from .constants import VERSION_MAJOR, VERSION_MINOR
from .encode import EncodedTensor, encode, encode_codebook, encode_float_planes, encode_raw
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
from .reader import DczReader, open
from .records import TensorInfo
from . import graph
from .runtime import InferenceSession, ProviderError, load_weights, to_onnx
from .writer import write

__version__ = "0.1.0"
FORMAT_VERSION = (VERSION_MAJOR, VERSION_MINOR)

__all__ = [
    "open", "write", "to_onnx", "load_weights", "InferenceSession", "encode", "encode_raw", "encode_codebook", "encode_float_planes",
    "DczReader", "EncodedTensor", "TensorInfo",
    "DczError", "ProviderError", "FormatError", "VersionError", "ChecksumError", "LimitError", "TensorError", "HuffmanError", "EncodeError",
    "FORMAT_VERSION", "__version__",
]
