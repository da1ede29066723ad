"""Stage 3, storage: export to ONNX, store each shared layer with exactly its codebook and indices, write the .dcz;
run a written .dcz in ONNX Runtime."""

from __future__ import annotations

import copy
import io
import math
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

import dcformat

from ..errors import ConvertError
from .loaders import batches, is_arrays, model_device
from .share import Quantized

OPSET = 17


def export_onnx(model: nn.Module, input_shape, opset: int = OPSET):
    """ONNX ModelProto (TorchScript exporter), input 'input', output 'logits', batch dynamic.

    Exported in PRESERVE mode so that BatchNorm is not folded into the preceding weights:
    every parameter keeps its values and (for named modules) its state_dict name."""
    import onnx

    was = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(*input_shape),), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], export_params=True,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        text = str(e).strip().splitlines()
        raise ConvertError(f"cannot export the model to ONNX: {text[0] if text else type(e).__name__}") from None
    finally:
        model.train(was)
    return onnx.load_from_string(buf.getvalue())


def _match(arrays: Mapping[str, np.ndarray], name: str, want: np.ndarray):
    """The initializer holding ``want``: by name, else by value (also transposed). (key, transposed)."""
    if name in arrays and arrays[name].shape == want.shape and np.array_equal(arrays[name], want):
        return name, False
    for k, a in arrays.items():
        if a.dtype == want.dtype and a.shape == want.shape and np.array_equal(a, want):
            return k, False
    if want.ndim == 2:
        for k, a in arrays.items():
            if a.dtype == want.dtype and a.shape == want.T.shape and np.array_equal(a, want.T):
                return k, True
    return None, False


def encode_model(model: nn.Module, quantized: Mapping[str, Quantized], input_shape, opset: int = OPSET):
    """(graph, encoded tensors, notes, bytes of the plain ONNX file): the quantized layers are stored with exactly their
    codebooks and indices (checked against the exported initializers), the rest exactly. A model on a GPU is exported
    from a CPU copy."""
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()
    onnx_model = export_onnx(model, input_shape, opset)
    onnx_bytes = onnx_model.ByteSize()
    graph, arrays = dcformat.graph.strip_weights(onnx_model, copy=False)
    tensors, done, notes = {}, set(), []
    for name, q in quantized.items():
        want = q.values()
        key, transposed = _match(arrays, name, want)
        if key is None:
            notes.append(f"{name}: the ONNX export changed its values (fused?); stored exactly as exported")
            continue
        idx = q.indices.T if transposed else q.indices
        enc = dcformat.encode_codebook(key, q.codebook, idx, idx.shape, "float32")
        tensors[key] = enc
        done.add(key)
    for key, arr in arrays.items():
        if key not in done:
            tensors[key] = dcformat.encode(key, arr)
    ordered = [tensors[k] for k in arrays]  # the graph's order
    return graph, ordered, notes, onnx_bytes


def tensor_rows(tensors) -> list[dict]:
    """Report rows of encoded tensors (for the per-layer table)."""
    rows = []
    for t in tensors:
        i = t.info
        numel = int(np.prod(i.shape, dtype=np.int64))
        rows.append({"name": t.name, "shape": "x".join(map(str, i.shape)) or "()", "params": numel,
                     "encoding": t.encoding, "sparsity": 1 - i.nonzeros / numel if numel else 0.0,
                     "codebook": i.codebook_size, "gap_bits": i.gap_bits, "bytes": t.nbytes,
                     "ratio": numel * 4 / t.nbytes if t.nbytes else math.inf})
    return rows


def write_dcz(model: nn.Module, quantized: Mapping[str, Quantized], out, input_shape, metadata: Mapping | None = None,
              opset: int = OPSET) -> dict:
    """Export, encode and write ``out``; returns {"bytes", "rows", "notes", "onnx_bytes"}."""
    graph, tensors, notes, onnx_bytes = encode_model(model, quantized, input_shape, opset)
    from ..compress import compact_graph

    size = dcformat.write(out, tensors, graph=compact_graph(graph), metadata=metadata, dictionary=True)
    return {"bytes": size, "rows": tensor_rows(tensors), "notes": notes, "onnx_bytes": onnx_bytes}


def ort_predict(path, x, batch_size: int = 1024) -> np.ndarray:
    """Predicted classes of a .dcz decoded into ONNX Runtime."""
    sess = dcformat.InferenceSession(os.fspath(path))
    x = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, np.float32)
    outs = [sess.run(None, {"input": x[s : s + batch_size]})[0].argmax(1) for s in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros(0, np.int64)


def ort_accuracy(path, x, y=None, batch_size: int = 1024) -> float:
    """Top-1 accuracy (percent) of a .dcz run in ONNX Runtime, over (x, y) arrays or over ``x`` alone when it is
    a Dataset / DataLoader of (input, label)."""
    if y is None and not is_arrays(x):
        sess = dcformat.InferenceSession(os.fspath(path))
        right = n = 0
        for xb, yb in batches(x, batch_size, shuffle=False, shard=False):
            pred = sess.run(None, {"input": np.asarray(xb.numpy() if isinstance(xb, torch.Tensor) else xb, np.float32)})[0]
            right += int((pred.argmax(1) == np.asarray(yb).reshape(-1)).sum())
            n += len(yb)
        return 100.0 * right / n if n else 0.0
    if y is None:
        x, y = x
    y = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    return float(np.mean(ort_predict(path, x, batch_size) == y) * 100)
