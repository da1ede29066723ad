"""The runtime on a GPU: run only where onnxruntime has CUDAExecutionProvider (onnxruntime-gpu).

ONNX Runtime's CUDA provider computes float32 Gemm/MatMul/Conv in TF32 by default (provider
option ``use_tf32``, on by default), about 1e-3 relative error: the closeness checks at
rtol 1e-4 turn it off; a separate check runs the plain ``providers=['cuda']`` session.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import dcformat
from models import cnn_model
from numpy_mlp import MLP
from converters.prune import magnitude_mask
from converters.quantize import quantize
from dcformat.cli import run_main
from dcformat.graph import strip_weights

CUDA = "CUDAExecutionProvider"
pytestmark = pytest.mark.skipif(
    CUDA not in ort.get_available_providers(),
    reason=f"onnxruntime {ort.__version__} has no {CUDA} (needs onnxruntime-gpu and an NVIDIA GPU); "
    f"available: {', '.join(ort.get_available_providers())}",
)
EXACT_FP32 = ("cuda", {"use_tf32": "0"})


def _pq(w, sparsity, bits):
    cb, idx = quantize(w * magnitude_mask(w, sparsity), bits)
    return cb.astype(np.float32), idx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    rng = np.random.default_rng(0)
    out = {}
    # MLP
    net = MLP([784, 1024, 512, 10], seed=0)
    records = []
    for i, (sp, bits) in enumerate([(0.9, 5), (0.9, 5), (0.6, 8)]):
        cb, idx = _pq(net.W[i], sp, bits)
        net.W[i] = cb[idx]
        net.b[i] = (rng.standard_normal(net.b[i].shape) * 0.1).astype(np.float32)
        records += [dcformat.encode_codebook(f"fc{i + 1}.weight", cb, idx), dcformat.encode_raw(f"fc{i + 1}.bias", net.b[i])]
    graph, _ = strip_weights(net.to_onnx())
    dcformat.write(d / "mlp.dcz", records, graph=graph)
    out["mlp"] = (d / "mlp.dcz", {"input": rng.standard_normal((16, 784)).astype(np.float32)})
    # CNN
    weights, records = {}, []
    for k, shape, sp, bits in [("conv1.weight", (32, 3, 3, 3), 0.6, 8), ("conv2.weight", (64, 32, 3, 3), 0.6, 8),
                               ("fc.weight", (10, 64 * 16 * 16), 0.9, 5)]:
        cb, idx = _pq((rng.standard_normal(shape) * 0.1).astype(np.float32), sp, bits)
        weights[k] = cb[idx]
        records.append(dcformat.encode_codebook(k, cb, idx))
        b = k.replace("weight", "bias")
        weights[b] = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
        records.append(dcformat.encode_raw(b, weights[b]))
    graph, _ = strip_weights(cnn_model(weights, size=32))
    dcformat.write(d / "cnn.dcz", records, graph=graph)
    out["cnn"] = (d / "cnn.dcz", {"x": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)})
    return out


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("compact", [False, True])
def test_cuda_matches_cpu(models, which, compact):
    path, feeds = models[which]
    cpu = dcformat.InferenceSession(path, providers=["cpu"]).run(None, feeds)[0]
    sess = dcformat.InferenceSession(path, providers=[EXACT_FP32], compact=compact)
    assert sess.get_providers()[0] == CUDA
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, cpu, rtol=1e-4, atol=1e-4)
    assert np.array_equal(got.argmax(1), cpu.argmax(1))


@pytest.mark.parametrize("compact", [False, True])
def test_plain_cuda_session(models, compact):
    """providers=['cuda'] as a user writes it (TF32 on): runs on the GPU, close to the CPU."""
    path, feeds = models["mlp"]
    cpu = dcformat.InferenceSession(path).run(None, feeds)[0]
    sess = dcformat.InferenceSession(path, providers=["cuda"], compact=compact)
    assert sess.get_providers()[0] == CUDA
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, cpu, rtol=2e-2, atol=2e-2 * float(np.abs(cpu).max()))


@pytest.mark.parametrize("compact", [[], ["--compact"]])
def test_dcrun_on_cuda(models, capsys, compact):
    path, _ = models["cnn"]
    with pytest.raises(SystemExit) as e:
        run_main([str(path), "--provider", "cuda", "--bench", "20", "--batch", "4", *compact])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    assert "bench (cuda" in out and "20 runs p50" in out
    assert "output logits: float32 [4, 10]" in out
