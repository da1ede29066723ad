"""A deployment box must not need PyTorch: decode and run a .dcz where importing torch fails."""

import subprocess
import sys
import textwrap

import numpy as np

import dcformat
from numpy_mlp import MLP


def test_decode_and_run_without_torch(tmp_path):
    net = MLP([8, 16, 3], seed=1)
    graph, arrays = dcformat.graph.strip_weights(net.to_onnx())
    dcformat.write(tmp_path / "m.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", net.forward(x))
    script = textwrap.dedent(f"""
        import sys, importlib.abc
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np, dcformat
        sess = dcformat.InferenceSession({str(tmp_path / 'm.dcz')!r})
        got = sess.run(None, {{"input": np.load({str(tmp_path / 'x.npy')!r})}})[0]
        np.testing.assert_allclose(got, np.load({str(tmp_path / 'want.npy')!r}), rtol=1e-5, atol=1e-5)
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
