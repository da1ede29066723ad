"""Small ONNX models the tests share (built with onnx.helper; no PyTorch)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def cnn_model(weights: dict, opset: int = 17, size: int = 16):
    """Conv-Relu-MaxPool-Conv-Relu-Flatten-Gemm on N x 3 x size x size images, 10 logits.
    ``weights``: conv1/conv2/fc .weight and .bias arrays, in initializer order."""
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights[k], k) for k in weights],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def constants_and_if_model(w: np.ndarray, then_value: np.ndarray, else_value: np.ndarray, batch="N"):
    """y = (x @ W * 0.5) @ (cond ? then : else): weights in an initializer (W), Constant nodes
    (k, and one in each If branch) and subgraphs. ``w``: (d, r); the branch values: (r, 2)."""
    then_c = helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(then_value))
    else_c = helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(else_value))
    then_g = helper.make_graph([then_c], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, then_value.shape)])
    else_g = helper.make_graph([else_c], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, else_value.shape)])
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "W"], ["y0"]),
        helper.make_node("Mul", ["y0", "k"], ["y1"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["y1", "b"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, w.shape[0]]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        [numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def lstm_model(w: np.ndarray, r: np.ndarray, b: np.ndarray, direction: str = "forward", in_if: bool = False,
               pieces: bool = False, head: np.ndarray | None = None):
    """An ONNX LSTM on X [seq, 1, input] with initial_h / initial_c given as inputs h0, c0 [dirs, 1, hidden];
    outputs Y and, with ``head`` ([hidden*dirs, k]), y = Y[-1] @ head. ``w``, ``r``, ``b``: ONNX's
    [dirs, 4h, in], [dirs, 4h, h], [dirs, 8h]. ``pieces``: W and R stored 2-D in PyTorch's gate order
    (i, f, g, o) and reordered in the graph by Slice + Concat + Unsqueeze, as silero-vad's export does
    (single direction); ``in_if``: the LSTM sits in the then-branch of an If on input ``cond`` (the
    else-branch runs an LSTM on zeros)."""
    hidden = r.shape[-1]
    dirs = w.shape[0]
    inits = {"B": b}
    if pieces:
        perm = np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in (0, 2, 3, 1)])
        inits["W2"], inits["R2"] = w[0][perm], r[0][perm]  # so that slicing back gives w, r
        for k in range(4):
            inits[f"s{k}"] = np.array([k * hidden], np.int64)
            inits[f"e{k}"] = np.array([(k + 1) * hidden], np.int64)
        inits["ax0"] = np.array([0], np.int64)
    else:
        inits["W"], inits["R"] = w, r

    def cell(sfx: str, x: str) -> list:
        """The (reordering and) LSTM nodes, their values suffixed ``sfx`` (each If branch has its own)."""
        nodes, wr = [], ("W", "R")
        if pieces:
            wr = (f"W{sfx}", f"R{sfx}")
            for src, dst in zip(("W2", "R2"), wr):
                nodes += [helper.make_node("Slice", [src, f"s{k}", f"e{k}", "ax0"], [f"{src}_{k}{sfx}"]) for k in range(4)]
                nodes += [helper.make_node("Concat", [f"{src}_{k}{sfx}" for k in (0, 3, 1, 2)], [f"{src}_c{sfx}"], axis=0),
                          helper.make_node("Unsqueeze", [f"{src}_c{sfx}", "ax0"], [dst])]  # ONNX i, o, f, c
        return nodes + [helper.make_node("LSTM", [x, wr[0], wr[1], "B", "", "h0", "c0"], [f"Y{sfx}", f"Yh{sfx}"],
                                         hidden_size=hidden, direction=direction)]

    last = [helper.make_node("Gather", ["Y", "last"], ["Ylast"], axis=0),
            helper.make_node("Reshape", ["Ylast", "flat"], ["Yf"])]
    inits["last"] = np.array(-1, np.int64)
    inits["flat"] = np.array([1, dirs * hidden], np.int64)
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if head is not None:
        inits["head"] = head
        last.append(helper.make_node("MatMul", ["Yf", "head"], ["y"]))
        outs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, w.shape[2]]),
           helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, 1, hidden]),
           helper.make_tensor_value_info("c0", TensorProto.FLOAT, [dirs, 1, hidden])]
    if in_if:
        then_g = helper.make_graph(cell("_t", "x"), "then", [], [helper.make_tensor_value_info("Y_t", TensorProto.FLOAT, None)])
        else_g = helper.make_graph([helper.make_node("Mul", ["x", "zf"], ["x0"])] + cell("_e", "x0"), "else", [],
                                   [helper.make_tensor_value_info("Y_e", TensorProto.FLOAT, None)])
        inits["zf"] = np.zeros(1, np.float32)
        nodes = [helper.make_node("If", ["cond"], ["Y"], then_branch=then_g, else_branch=else_g)] + last
        ins.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    else:
        nodes = [n for n in cell("", "x")] + last
    g = helper.make_graph(nodes, "lstm", ins, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def lstm_reference(x, w, r, b, h0, c0, reverse: bool = False, with_c: bool = False):
    """numpy LSTM (ONNX gate order i, o, f, c; default activations), one direction; x [seq, batch, in],
    w [4h, in], r [4h, h], b [8h], h0/c0 [batch, h]. Returns Y [seq, batch, h] (``with_c``: and the last c)."""
    hidden = r.shape[-1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    ys = [None] * x.shape[0]
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        g = x[t] @ w.T + h @ r.T + b[: 4 * hidden] + b[4 * hidden:]
        i, o, f, cc = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(cc)
        h = sig(o) * np.tanh(c)
        ys[t] = h
    return (np.stack(ys), c) if with_c else np.stack(ys)
