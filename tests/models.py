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
