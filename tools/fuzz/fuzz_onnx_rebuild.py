"""Fuzz the rebuild of ONNX models: dcformat.to_onnx (full and compact), runtime.prepare,
load_weights, and ONNX Runtime session creation (dcformat.InferenceSession).

    python tools/fuzz/fuzz_onnx_rebuild.py -max_len=8192 -dict=tools/fuzz/dcz.dict CORPUS_DIR

Crashes: any exception other than dcformat.DczError; a model from to_onnx that still holds
an EXTERNAL tensor anywhere (it must be self-contained: nothing may make ONNX Runtime read
another file); a prepared model whose EXTERNAL tensors are anything but the initializers
dcformat hands to ONNX Runtime itself. Set DCZ_FUZZ_ORT=0 to skip session creation.
"""

from __future__ import annotations

import os

import common

with common.instrumented(__name__ == "__main__"):
    import dcformat
    from dcformat import runtime

ORT = os.environ.get("DCZ_FUZZ_ORT", "1") != "0"


def _session_options():
    """Quiet, single-threaded; a new one per session (a session keeps its external weights in it)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return so


def _assert_self_contained(model, allowed=()):
    from onnx import TensorProto

    for t in common.all_tensor_protos(model):  # runtimes follow external_data only when data_location says so
        if t.data_location == TensorProto.EXTERNAL:
            assert t.name in allowed, f"rebuilt model keeps external data in tensor {t.name!r}: {t.external_data}"


def exercise(path, run):
    for compact in (False, True):
        m = run(dcformat.to_onnx, path, compact=compact)
        if m is not None:
            _assert_self_contained(m)
            m.SerializeToString()
    p = run(runtime.prepare, path)
    if p is not None:
        main = {t.name for t in p.model.graph.initializer}
        assert set(p.external) <= main
        _assert_self_contained(p.model, allowed=set(p.external))
        if ORT:
            sess = run(dcformat.InferenceSession, path, sess_options=_session_options())
            if sess is not None:
                sess.get_inputs(), sess.get_outputs()
    run(dcformat.load_weights, path)


def test_one_input(data: bytes) -> None:
    common.run_both_modes(data, exercise)


TestOneInput = test_one_input

if __name__ == "__main__":
    common.main(test_one_input)
