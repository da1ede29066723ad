"""Running .dcz models: rebuild the ONNX model, hand it to ONNX Runtime. No torch."""

from __future__ import annotations

import os

from .errors import FormatError
from .graph import fill_weights, reference, iter_tensors
from .reader import DczReader, open as open_dcz


def _reader(src) -> tuple[DczReader, bool]:
    if isinstance(src, DczReader):
        return src, False
    return open_dcz(src), True


def to_onnx(src):
    """The model of a .dcz file (path or open reader) as an onnx.ModelProto with its weights filled in."""
    reader, owned = _reader(src)
    try:
        model = reader.graph
        if model is None:
            raise FormatError(f"{reader.path}: weights-only file (no graph section); use load_weights() instead")
        names = {reference(t) for _, t in iter_tensors(model.graph)} - {None}
        return fill_weights(model, {n: reader[n] for n in names if n in reader})
    finally:
        if owned:
            reader.close()


def load_weights(src) -> dict:
    """All tensors of a .dcz file as a dict name -> numpy array."""
    reader, owned = _reader(src)
    try:
        return {name: reader[name] for name in reader}
    finally:
        if owned:
            reader.close()


def InferenceSession(path: str | os.PathLike, providers=None, sess_options=None):  # noqa: N802 - mirrors ORT
    """An onnxruntime.InferenceSession for the model in a .dcz file."""
    import onnxruntime as ort

    model = to_onnx(path)
    return ort.InferenceSession(model.SerializeToString(), sess_options=sess_options,
                                providers=providers or ["CPUExecutionProvider"])
