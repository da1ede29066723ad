"""A small numpy MLP (Gemm + ReLU) with masked training and trained quantization (tests without PyTorch).

Enough to show the whole Deep Compression loop on a small data set without PyTorch:
train, prune with masks kept during retraining, share weights with k-means and fine-tune
the centroids (the gradients of all weights sharing a centroid summed into it).
"""

from __future__ import annotations

import numpy as np


class MLP:
    def __init__(self, sizes: list[int], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.W = [(rng.standard_normal((o, i)) * np.sqrt(2.0 / i)).astype(np.float32) for i, o in zip(sizes, sizes[1:])]
        self.b = [np.zeros(o, np.float32) for o in sizes[1:]]
        self.masks = [np.ones_like(w, bool) for w in self.W]

    def forward(self, x: np.ndarray, keep: bool = False):
        acts = [x]
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            x = x @ w.T + b
            if i < len(self.W) - 1:
                x = np.maximum(x, 0)
            acts.append(x)
        return (x, acts) if keep else x

    def grads(self, x, y):
        logits, acts = self.forward(x, keep=True)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        d = p
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        gw, gb = [], []
        for i in range(len(self.W) - 1, -1, -1):
            gw.insert(0, d.T @ acts[i])
            gb.insert(0, d.sum(0))
            if i:
                d = (d @ self.W[i]) * (acts[i] > 0)
        return loss, gw, gb

    def accuracy(self, x, y) -> float:
        return float(np.mean(self.forward(x).argmax(1) == y) * 100)

    def train(self, x, y, epochs: int, lr: float = 1e-3, batch: int = 128, seed: int = 0, l2: float = 1e-4):
        """Adam; masked weights stay zero."""
        rng = np.random.default_rng(seed)
        params = self.W + self.b
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        t = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for s in range(0, len(x), batch):
                idx = order[s : s + batch]
                _, gw, gb = self.grads(x[idx], y[idx])
                gw = [(g + l2 * w) * mk for g, w, mk in zip(gw, self.W, self.masks)]
                t += 1
                for j, (p, g) in enumerate(zip(params, gw + gb)):
                    m[j] = 0.9 * m[j] + 0.1 * g
                    v[j] = 0.999 * v[j] + 0.001 * g * g
                    p -= (lr * (m[j] / (1 - 0.9**t)) / (np.sqrt(v[j] / (1 - 0.999**t)) + 1e-8)).astype(p.dtype)
            for w, mk in zip(self.W, self.masks):
                w *= mk

    def finetune_centroids(self, x, y, codebooks, indices, epochs: int, lr: float = 1e-4, batch: int = 128, seed: int = 0):
        """Trained quantization: each centroid moves by the summed gradient of its weights."""
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for s in range(0, len(x), batch):
                idx = order[s : s + batch]
                _, gw, _ = self.grads(x[idx], y[idx])
                for i, (cb, ix) in enumerate(zip(codebooks, indices)):
                    g = np.bincount(ix.reshape(-1), weights=gw[i].reshape(-1), minlength=cb.size)
                    g[cb == 0] = 0  # the pruned zero stays zero
                    cb -= (lr * g).astype(cb.dtype)
                    self.W[i] = cb[ix]

    def to_onnx(self, input_name: str = "input", output_name: str = "logits", opset: int = 17):
        """The model as ONNX (Gemm with transB, Relu), batch dimension dynamic."""
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits, x = [], [], input_name
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            inits += [numpy_helper.from_array(w, f"fc{i + 1}.weight"), numpy_helper.from_array(b, f"fc{i + 1}.bias")]
            out = output_name if i == len(self.W) - 1 else f"fc{i + 1}"
            nodes.append(helper.make_node("Gemm", [x, f"fc{i + 1}.weight", f"fc{i + 1}.bias"], [out], transB=1, name=f"fc{i + 1}"))
            if i < len(self.W) - 1:
                nodes.append(helper.make_node("Relu", [out], [f"relu{i + 1}"], name=f"relu{i + 1}"))
                x = f"relu{i + 1}"
        graph = helper.make_graph(
            nodes, "mlp",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", self.W[0].shape[1]])],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", self.W[-1].shape[0]])],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="dcz")
