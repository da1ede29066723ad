"""The command line without surprises: files the user did not name are not replaced, exit codes
follow the conventions (1 failure, 2 usage, 130 Ctrl-C, quiet on a closed pipe), messages say
which option, item or file, and what to do; --help and --version of every tool start light."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import numpy as np
import pytest

import dcformat
from clitools import cli as _run  # (exit status, stdout, stderr) of a tool's main(argv)
from dcformat import cli, cliutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def weights(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    p = tmp_path / "m.safetensors"
    safetensors.save_file({"fc1.weight": rng.standard_normal((32, 40)).astype(np.float32),
                           "fc1.bias": rng.standard_normal(32).astype(np.float32)}, str(p))
    return p


def test_dcconvert_keeps_a_file_it_was_not_told_to_replace(weights, tmp_path, capsys):
    from converters.cli import main

    out = tmp_path / "m.dcz"
    out.write_bytes(b"the user's file")
    code, _, err = _run(main, [weights, "-q"], capsys)
    assert code == 2 and "--force" in err and "m.dcz exists" in err and err.count("\n") == 1
    assert out.read_bytes() == b"the user's file"
    code, _, err = _run(main, [weights, "-q", "--force"], capsys)
    assert code == 0, err
    assert out.read_bytes().startswith(dcformat.constants.MAGIC)
    code, _, err = _run(main, [weights, "-q", "-o", out], capsys)  # naming it with -o is asking for it
    assert code == 0, err


def test_dcz_demo_keeps_an_existing_demo_dcz(tmp_path, monkeypatch, capsys):
    from converters.demo import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.dcz").write_bytes(b"mine")
    code, _, err = _run(main, ["demo"], capsys)  # refused before any training
    assert code == 2 and "demo.dcz exists" in err and "--force" in err
    assert (tmp_path / "demo.dcz").read_bytes() == b"mine"


def test_demo_dcz_is_git_ignored():
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "demo.dcz" in f.read().split()


@pytest.mark.parametrize("value, says", [
    ("fc*=0.9,,conv*=", "an empty item in 'fc*=0.9,,conv*='"),
    ("fc*=0.9,conv*=", "'conv*=' has no value"),
    ("fc*=lots", "'fc*=lots': 'lots' is not a number"),
])
def test_layer_setting_errors_name_the_option_and_the_item(weights, capsys, value, says):
    from converters.cli import main

    code, _, err = _run(main, [weights, "-q", "--force", "--sparsity", value], capsys)
    assert code == 2 and "--sparsity" in err and says in err and err.count("\n") == 1, err
    assert "could not convert" not in err


def test_directory_and_missing_input_exit_alike(tmp_path, capsys):
    from converters.cli import main as convert_main

    for main in (cli.inspect_main, cli.run_main, convert_main):
        missing = _run(main, [tmp_path / "nothere.onnx"], capsys)
        directory = _run(main, [tmp_path], capsys)
        assert missing[0] == directory[0] == 1, (main, missing, directory)
        assert missing[2].startswith("error: ") and directory[2].startswith("error: ")
        # and each says which it is (dcrun called a directory "no such file")
        assert "no such file" in missing[2].lower() and "directory" in directory[2].lower(), (main, missing, directory)
    code, _, err = _run(cli.decode_main, [tmp_path, "-o", tmp_path / "x.onnx"], capsys)
    assert code == 1 and err.startswith("error: ") and "directory" in err


def test_ctrl_c_exits_130(capsys):
    @click.command()
    def slow():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        cliutil.run(slow, [])
    assert e.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_closed_pipe_is_quiet(tmp_path):
    names = {f"layer{i}.weight": np.ones(3, np.float32) for i in range(3000)}
    p = tmp_path / "many.dcz"
    dcformat.write(p, [dcformat.encode(n, a) for n, a in names.items()])
    proc = subprocess.Popen([sys.executable, "-c", "from dcformat.cli import inspect_main; inspect_main()",
                             "--csv", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first.startswith(b"file,name,shape")
    assert err == b"" and proc.returncode in (-13, 141), (proc.returncode, err)


def test_csv_escapes_names(tmp_path, capsys):
    p = tmp_path / "evil.dcz"
    dcformat.write(p, [dcformat.encode("evil\x1b]8;;file:///etc/passwd\x07x", np.ones(3, np.float32))])
    code, out, _ = _run(cli.inspect_main, ["--csv", p], capsys)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "evil\\x1b]8;;file:///etc/passwd\\x07x" in out


def test_markup_names_print_as_text(tmp_path, capsys):
    """Piped and (tests/test_tables.py) on a terminal: a name is never rich markup."""
    p = tmp_path / "markup.dcz"
    names = ["[/]", "[link=file:///etc/passwd]click me[/link]"]
    dcformat.write(p, [dcformat.encode(n, np.ones(100, np.float32)) for n in names])
    code, out, err = _run(cli.inspect_main, [p], capsys)
    assert code == 0 and err == "" and all(n in out for n in names)


def test_verify_accepts_a_valid_onnx_model(tmp_path, capsys):
    from numpy_mlp import MLP

    p = tmp_path / "m.onnx"
    p.write_bytes(MLP([8, 16, 4]).to_onnx().SerializeToString())
    code, out, _ = _run(cli.inspect_main, ["--verify", p], capsys)
    assert code == 0 and "DAMAGED" not in out and "onnx.checker: ok" in out and "no checksums" in out
    p.write_bytes(p.read_bytes()[:40])
    code, out, _ = _run(cli.inspect_main, ["--verify", p], capsys)
    assert code == 1 and "DAMAGED" in out


def test_dcrun_weights_only_says_what_to_type(tmp_path, capsys):
    p = tmp_path / "w.dcz"
    dcformat.write(p, [dcformat.encode("w", np.ones(3, np.float32))])
    code, _, err = _run(cli.run_main, [p], capsys)
    assert code == 1 and "dcdecode" in err and "--state-dict" in err and "load_weights" not in err


def test_dcdecode_checksum_error_names_the_file(tmp_path, capsys):
    p = tmp_path / "d.dcz"
    dcformat.write(p, [dcformat.encode("w", np.arange(1000, dtype=np.float32))])
    with dcformat.open(p) as r:
        sec = r._tensor_sections["w"]
    data = bytearray(p.read_bytes())
    data[sec.offset + 10] ^= 1
    p.write_bytes(bytes(data))
    code, _, err = _run(cli.decode_main, [p, "--state-dict", tmp_path / "o.safetensors"], capsys)
    assert code == 1 and "checksum" in err and str(p) in err and err.count("\n") == 1


def test_compact_help_says_it_is_slower():
    from click.testing import CliRunner

    out = CliRunner().invoke(cli.dcrun, ["--help"]).output
    assert "slower" in " ".join(out.split())


HEAVY = ("numpy", "onnx", "onnxruntime", "numba", "ml_dtypes", "torch", "rich", "sympy")


QUICK = [("dcformat.cli", "inspect_main", []), ("dcformat.cli", "decode_main", []), ("dcformat.cli", "run_main", []),
         ("converters.cli", "main", []), ("converters.demo", "main", []), ("converters.demo", "main", ["pipeline"]),
         ("converters.pipeline_cli", "pipeline", [])]


@pytest.mark.parametrize("module, attr, args, flag", [(*q, f) for q in QUICK for f in ("--help", "--version")]
                         + [("converters.demo", "main", ["demo"], "--help")])  # dcz demo has no --version of its own
def test_help_and_version_import_no_heavy_stack(module, attr, args, flag):
    """--help and --version load click and the command, not numpy, onnx, onnxruntime, numba, ml_dtypes,
    torch, rich or sympy: the defaults dcconvert's and dcz's options show come from converters.defaults."""
    code = (f"import sys\nfrom {module} import {attr}\n"
            f"try:\n    {attr}({[*args, flag]!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the command printed nothing"
    loaded = set(out.stdout.splitlines()[-1].split())
    assert not loaded, loaded
    if flag == "--version":
        assert dcformat.__version__ in out.stdout
    else:
        assert "Usage:" in out.stdout


def test_defaults_have_one_source():
    """The numpy-free converters.defaults is what the numpy modules export (same objects, not copies)."""
    from converters import calibrate, compress, defaults, ecvq, quantize

    assert compress.DEFAULT_BITS is defaults.DEFAULT_BITS and compress.DEFAULT_SPARSITY is defaults.DEFAULT_SPARSITY
    assert compress.DEFAULT_MIN_SIZE == defaults.DEFAULT_MIN_SIZE and quantize.INITS is defaults.INITS
    assert ecvq.parse_strength is defaults.parse_strength and ecvq.DEFAULT_STRENGTH == defaults.DEFAULT_STRENGTH
    assert calibrate.DEFAULT_MAX_ERROR == defaults.DEFAULT_MAX_ERROR and calibrate.WARN_COSINE == defaults.WARN_COSINE
    assert compress.Settings().ecvq.get("fc.weight") == defaults.DEFAULT_STRENGTH


def test_lazy_bfloat16_and_kernels():
    """ml_dtypes is imported when bfloat16 is first looked up, numba when a kernel first runs."""
    code = ("import sys, numpy as np, dcformat\n"
            "from dcformat.constants import DTYPES\n"
            "assert 'bfloat16' in DTYPES and 'ml_dtypes' not in sys.modules\n"
            "r = dcformat.encode('w', np.ones(4, np.float32), encoding='raw')\n"
            "assert 'numba' not in sys.modules and 'onnx' not in sys.modules\n"
            "assert DTYPES['bfloat16'].name == 'bfloat16' and 'ml_dtypes' in sys.modules\n"
            "t = dcformat.encode('c', np.where(np.arange(1000) % 10 == 0, 0.5, 0).astype(np.float32))\n"
            "assert 'numba' in sys.modules\n"
            "assert callable(dcformat.encode) and dcformat.FORMAT_VERSION == (1, 5)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr


def test_export_error_is_one_line_naming_the_operator():
    from converters.torch_inputs import _export_error

    torch_says = RuntimeError("Exporting the operator 'aten::cummax' to ONNX opset version 17 is not supported. "
                              "Please feel free to request support or submit a pull request on PyTorch GitHub: "
                              + "x" * 400 + "\n  File ...")
    msg = _export_error("m.pt", torch_says, None)
    assert "\n" not in msg and len(msg) < 250 and "aten::cummax" in msg and "--opset" in msg
    other = _export_error("m.pt", RuntimeError("y" * 600), 17)
    assert "\n" not in other and len(other) < 300 and "cannot export the model to ONNX" in other


def test_checkpoint_dict_unwrapping_is_a_note(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from converters.cli import main

    p = tmp_path / "ckpt.pt"
    torch.save({"model": torch.nn.Linear(40, 30).state_dict(), "epoch": 3, "optimizer": {}}, p)
    code, out, err = _run(main, [p], capsys)
    assert code == 0, err
    assert "note: the checkpoint is a dict: its weights come from ['model']; ignored: epoch, optimizer" in out


def test_trust_pickle_imports_a_module_beside_the_user(tmp_path):
    """A pickled nn.Module whose class lives in a module in the current directory loads with
    --trust-code (and its old name --trust-pickle), as --model mod:fn can import it (and without
    the flag it is refused, naming the flag)."""
    pytest.importorskip("torch")
    (tmp_path / "mynet.py").write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                                       "        super().__init__()\n        self.fc = torch.nn.Linear(6, 3)\n"
                                       "    def forward(self, x):\n        return self.fc(x)\n")
    make = "import sys, torch; sys.path.insert(0, '.'); import mynet; torch.save(mynet.Net(), 'net.pt')"
    subprocess.run([sys.executable, "-c", make], cwd=tmp_path, check=True, env=ENV)
    (tmp_path / "bin").mkdir()  # as a console script runs: sys.path[0] is its directory, not the cwd
    (tmp_path / "bin" / "dcconvert.py").write_text("from converters.cli import main\nmain()\n")
    convert = [sys.executable, str(tmp_path / "bin" / "dcconvert.py"), "net.pt", "--input-shape", "1,6", "-q",
               "-o", "net.dcz"]
    refused = subprocess.run(convert, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert refused.returncode == 1 and "--trust-code" in refused.stderr
    for flag in ("--trust-code", "--trust-pickle"):
        ok = subprocess.run(convert + [flag], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "net.dcz").exists()


def test_ort_errors_are_cut_to_what_failed():
    """The note about synthetic sizes quotes ONNX Runtime's innermost message and node, never a
    number cut in half ('INVALID_ARGUMENT : Non-z')."""
    from converters.cli import ort_reason

    msg = ("ONNX Runtime cannot run /x/vad.onnx on the synthetic calibration inputs: [ONNXRuntimeError] : 2 : "
           "INVALID_ARGUMENT : Non-zero status code returned while running If node. Name:'If_0' Status Message: "
           "Non-zero status code returned while running Pad node. Name:'If_0_then/stft/padding/Pad' Status Message: "
           "Pad reflect: post-pad (64) exceeds maximum allowed (15) for axis 1. Input shape:{1,16}")
    assert ort_reason(msg) == ("Pad reflect: post-pad (64) exceeds maximum allowed (15) for axis 1. Input shape:{1,16} "
                               "(node If_0_then/stft/padding/Pad, Pad)")
    plain = "[ONNXRuntimeError] : 1 : FAIL : " + "word " * 100
    cut = ort_reason(plain, 50)
    assert cut.endswith("word ...") and len(cut) <= 54 and "ONNXRuntimeError" not in cut
