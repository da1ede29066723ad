"""Graph section: weights moved out of an ONNX model and put back, also in subgraphs and Constant nodes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import dcformat
from models import constants_and_if_model
from dcformat.graph import iter_tensors, reference, strip_weights


def _model_with_constants_and_if():
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    return constants_and_if_model(w, np.full((4, 2), 2.5, np.float32), np.full((4, 2), -1.0, np.float32), batch=1)


def _run(model, cond):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.array([[1.0, 2.0, 3.0]], np.float32), "cond": np.array(cond)})[0]


def test_strip_and_fill_everywhere(tmp_path):
    model = _model_with_constants_and_if()
    stripped, arrays = strip_weights(model)
    assert len(arrays) == 4  # W, k, and the two branch constants
    assert all(reference(t) for _, t in iter_tensors(stripped.graph))
    dcformat.write(tmp_path / "m.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=stripped)
    rebuilt = dcformat.to_onnx(tmp_path / "m.dcz")
    onnx.checker.check_model(rebuilt)
    for cond in (True, False):
        np.testing.assert_array_equal(_run(rebuilt, cond), _run(model, cond))


def test_missing_record_is_reported(tmp_path):
    stripped, arrays = strip_weights(_model_with_constants_and_if())
    arrays.pop("W")
    records = [dcformat.encode(k, v) for k, v in arrays.items()]
    with pytest.raises(dcformat.EncodeError, match="refers to tensor 'W', which is not among"):  # the writer refuses
        dcformat.write(tmp_path / "m.dcz", records, graph=stripped)
    assert not (tmp_path / "m.dcz").exists()
    dcformat.write(tmp_path / "m.dcz", records, graph=stripped, checked=False)  # made anyway: readers refuse it
    with pytest.raises(dcformat.FormatError, match="'W'"):
        dcformat.to_onnx(tmp_path / "m.dcz")


def test_writer_refuses_a_graph_holding_its_weights(tmp_path):
    """The model itself, not its stripped graph, would store every weight twice."""
    model = _model_with_constants_and_if()
    _, arrays = strip_weights(model)
    with pytest.raises(dcformat.EncodeError, match="initializer 'W' holds its data.*strip_weights"):
        dcformat.write(tmp_path / "m.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=model)
    assert not (tmp_path / "m.dcz").exists()


def test_weights_only_file_has_no_model(tmp_path):
    dcformat.write(tmp_path / "w.dcz", [dcformat.encode("a", np.ones(3, np.float32))])
    with pytest.raises(dcformat.FormatError, match="weights-only"):
        dcformat.to_onnx(tmp_path / "w.dcz")
    assert np.array_equal(dcformat.load_weights(tmp_path / "w.dcz")["a"], np.ones(3, np.float32))


def test_external_data_outside_the_file_is_refused(tmp_path):
    """A graph tensor pointing at another file must not make the runtime read it."""
    (tmp_path / "secret.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    stripped, arrays = strip_weights(_model_with_constants_and_if())
    for t in stripped.graph.initializer:
        if t.name == "W":
            del t.external_data[:]
            for k, v in (("location", "secret.bin"), ("offset", "0"), ("length", "48")):
                e = t.external_data.add()
                e.key, e.value = k, v
    arrays.pop("W")
    path = tmp_path / "m.dcz"
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=stripped)
    with pytest.raises(dcformat.FormatError, match="outside the .dcz"):
        dcformat.to_onnx(path)
    with pytest.raises(dcformat.FormatError):
        dcformat.InferenceSession(path)


def _branches_with_same_names(opset=17):
    """An If whose branches both hold an unnamed Constant feeding 'c' and an initializer 'W' that
    shadows the main graph's 'W' (different values in each place)."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(tag, value, shadow):
        nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full((4, 2), value, np.float32))),
                 helper.make_node("Add", ["c", "W"], ["out_" + tag])]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info("out_" + tag, TensorProto.FLOAT, [4, 2])],
                                 [numpy_helper.from_array(np.full((4, 2), shadow, np.float32), "W")])

    nodes = [helper.make_node("If", ["cond"], ["b"], name="choose", then_branch=branch("then", 1.0, 10.0),
                              else_branch=branch("else", -1.0, 20.0)),
             helper.make_node("MatMul", ["x", "b"], ["y0"]),
             helper.make_node("Add", ["y0", "W"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                          [numpy_helper.from_array(np.full((1, 2), 0.5, np.float32), "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_subgraph_tensors_get_short_path_names(tmp_path):
    model = _branches_with_same_names()
    stripped, arrays = strip_weights(model)
    assert sorted(arrays) == sorted(["W", "choose.else_branch/c", "choose.else_branch/W",
                                     "choose.then_branch/c", "choose.then_branch/W"])
    assert all(len(n) < 32 and "#" not in n for n in arrays)
    assert float(arrays["choose.then_branch/W"][0, 0]) == 10.0 and float(arrays["choose.else_branch/W"][0, 0]) == 20.0
    # initializers keep their graph names (nodes refer to them); the references name the records
    inits = {t.name for g in (stripped.graph,) for t in g.initializer}
    assert inits == {"W"}
    path = tmp_path / "m.dcz"
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=stripped)
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = dcformat.InferenceSession(path)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        np.testing.assert_array_equal(sess.run(None, feed)[0], ref.run(None, feed)[0])


def test_inspect_of_the_onnx_lines_up_with_the_dcz(tmp_path):
    from dcformat.inspect import inspect_dcz, inspect_onnx

    model = _branches_with_same_names()
    onnx.save(model, tmp_path / "m.onnx")
    stripped, arrays = strip_weights(model)
    dcformat.write(tmp_path / "m.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=stripped)
    names = lambda rep: [r["name"] for r in rep["tensors"]]  # noqa: E731
    assert names(inspect_onnx(tmp_path / "m.onnx")) == names(inspect_dcz(tmp_path / "m.dcz")) == list(arrays)


def test_record_names_are_stable_and_unique():
    from dcformat.graph import record_names

    model = _model_with_constants_and_if()
    assert record_names(model) == record_names(onnx.ModelProto.FromString(model.SerializeToString()))
    # the branches' Constants have outputs no other tensor is named: they keep them, no path
    assert sorted(record_names(model)) == ["W", "e", "k", "t"]


def test_subgraph_names_take_the_path_only_where_they_are_shared():
    """Exporters name inlined subgraph values with their whole scope; the record name adds the
    subgraph path only to a name that two subgraph tensors share (in both of them), so a deep If
    nest does not make names of hundreds of characters (a VAD model's reached 254)."""
    from onnx import TensorProto, helper, numpy_helper

    from dcformat.graph import record_names

    def branch(tag, shared):
        consts = [helper.make_node("Constant", [], [f"scope/{tag}/Constant_output_0"],
                                   value=numpy_helper.from_array(np.full((2,), 1.0, np.float32))),
                  helper.make_node("Constant", [], [shared], value=numpy_helper.from_array(np.full((2,), 2.0, np.float32)))]
        add = helper.make_node("Add", [f"scope/{tag}/Constant_output_0", shared], [f"{tag}_out"])
        return helper.make_graph(consts + [add], tag, [], [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, [2])])

    inner = helper.make_node("If", ["cond"], ["inner_out"], name="scope/very/long/exporter/path/If_1",
                             then_branch=branch("a", "same"), else_branch=branch("b", "same"))
    outer_then = helper.make_graph([inner], "t", [], [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [2])])
    outer = helper.make_node("If", ["cond"], ["y"], name="If_0", then_branch=outer_then, else_branch=branch("c", "other"))
    g = helper.make_graph([outer], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    names = record_names(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert sorted(names) == ["If_0.then_branch/scope/very/long/exporter/path/If_1.else_branch/same",
                             "If_0.then_branch/scope/very/long/exporter/path/If_1.then_branch/same",
                             "other", "scope/a/Constant_output_0", "scope/b/Constant_output_0",
                             "scope/c/Constant_output_0"]


def test_reference_reads_the_onnx_enum():
    from dcformat import graph

    assert graph.EXTERNAL == onnx.TensorProto.EXTERNAL
