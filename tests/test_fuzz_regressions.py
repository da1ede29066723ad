"""What the fuzzers of tools/fuzz/ found, and a short bounded fuzz run of each harness.

* Every file in tests/attacks/regressions/ goes through all three harnesses (reader,
  ONNX rebuild + ONNX Runtime session, dcinspect): each must end in success or a DczError,
  and the harnesses' own checks (decoded arrays match their records, rebuilt models read no
  external data, dcinspect exits 0 or 1 with one error line) must hold.
* Findings that are clearer as code than as bytes are generated here or in
  tests/attacks/make_attacks.py (the graph-external-*, graph-record-reference-* and
  graph-references-amplify-* attacks).
* test_short_fuzz_run fuzzes each harness briefly: under atheris (libFuzzer, coverage-guided)
  when it is installed, and always in-process with the structure-aware mutator and a fixed
  seed, so a run is repeatable.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat  # noqa: F401 - imported before the harnesses: they must not instrument it here
from dcformat import DczError, FormatError
from dcformat.constants import EXPANSION_SLACK, MAX_EXPANSION

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tools" / "fuzz"
REGRESSIONS = Path(__file__).parent / "attacks" / "regressions"
sys.path.insert(0, str(FUZZ))
sys.path.insert(0, str(Path(__file__).parent / "attacks"))

import common  # noqa: E402
import dczmut  # noqa: E402
import fuzz_inspect  # noqa: E402
import fuzz_onnx_rebuild  # noqa: E402
import fuzz_reader  # noqa: E402
import make_attacks as ma  # noqa: E402
import make_corpus  # noqa: E402

HARNESSES = {"reader": fuzz_reader, "onnx_rebuild": fuzz_onnx_rebuild, "inspect": fuzz_inspect}
REGRESSION_FILES = sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.suffix != ".md")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The seed corpus without the ~300 crafted attacks: vectors, samples, graphs, other formats, regressions."""
    d = tmp_path_factory.mktemp("corpus")
    for name, data in make_corpus.seeds(attacks=False).items():
        (d / name).write_bytes(data)
    return d


# ============================================================================ replays


@pytest.mark.parametrize("harness", HARNESSES)
@pytest.mark.parametrize("path", REGRESSION_FILES, ids=lambda p: p.name)
def test_regression_file(path, harness):
    HARNESSES[harness].test_one_input(path.read_bytes())


def test_regression_files_exist():
    assert len(REGRESSION_FILES) >= 5


@pytest.mark.parametrize("harness", HARNESSES)
def test_seed_corpus_replays(corpus, harness):
    for p in sorted(corpus.iterdir()):
        HARNESSES[harness].test_one_input(p.read_bytes())


# ============================================================================ findings


def _dcinspect(path) -> tuple[int, str, str]:
    from dcformat import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            cli.inspect_main([str(path), "--json"])
    return e.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", [p for p in REGRESSION_FILES if p.name.startswith("inspect-")], ids=lambda p: p.name)
def test_dcinspect_rejects_malformed_other_formats(path, tmp_path):
    """dcinspect on a broken .onnx / .safetensors: KeyError, ValueError, OverflowError, RecursionError
    escaped its readers (found by fuzz_inspect); now one error line and exit 1."""
    code, out, err = _dcinspect(path)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("attack", ["graph-external-sparse-initializer", "graph-external-sparse-constant",
                                    "graph-external-in-training-info"])
def test_graph_cannot_make_onnx_runtime_read_a_file(attack, tmp_path, monkeypatch):
    """A sparse initializer (or a Constant's sparse_value) with external data made ONNX Runtime read
    ``secret.bin`` from its working directory into the model: the reference check skipped sparse
    tensors. Now the graph is refused before ONNX Runtime sees it."""
    path = tmp_path / "hostile.dcz"
    dcformat.write(path, ma.sample_tensors("dense"), graph=ma.HOSTILE_GRAPHS[attack](), checked=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    with dcformat.open(path) as r, pytest.raises(FormatError, match="outside the .dcz"):
        r.graph
    with pytest.raises(FormatError, match="outside the .dcz"):
        dcformat.to_onnx(path)
    with pytest.raises(FormatError, match="outside the .dcz"):
        dcformat.InferenceSession(path)
    from dcformat import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.decode_main([str(path), "-o", str(tmp_path / "out.onnx")])
    assert e.value.code == 1 and "outside the .dcz" in err.getvalue()
    assert not (tmp_path / "out.onnx").exists()


def test_references_to_one_record_count_once_each(tmp_path):
    """Several references may name one record; each gets a copy in a rebuilt model, so together they
    obey the expansion bound (an 8 GB to_onnx from a 100 KB file before); max_decoded_bytes lifts it."""
    path = tmp_path / "amplify.dcz"
    bomb = dcformat.encode_codebook("bomb", np.array([1.5], np.float32), np.zeros(1 << 20, np.uint8),
                                    encoding="codebook-dense", lane_size=1 << 24)
    graph = ma.amplifying_graph("bomb", 1 << 20, 2000)
    dcformat.write(path, [bomb], graph=graph, checked=False)
    with pytest.raises(dcformat.LimitError, match="once per reference"):
        dcformat.to_onnx(path)
    with dcformat.open(path, max_decoded_bytes=1 << 40) as r:
        assert len(r.graph.graph.initializer) == 2000  # the caller's explicit choice
    # dcformat.write itself pads the file until its bound covers the 2000 copies (spec 5.4): ~8 MB
    size = dcformat.write(path, [bomb], graph=graph)
    need = 2000 * (4 << 20)
    assert need <= MAX_EXPANSION * size + EXPANSION_SLACK < need + 64 * MAX_EXPANSION
    with dcformat.open(path) as r:
        assert len(r.graph.graph.initializer) == 2000


def _graph_file(path, model_bytes: bytes, tensors) -> Path:
    dcformat.write(path, tensors, graph=model_bytes, checked=False)
    return path


def _matmul_model(weight: str = "W"):
    from onnx import helper

    x = helper.make_tensor_value_info("x", 1, [1, 32])
    y = helper.make_tensor_value_info("y", 1, [1, 48])
    return helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", weight], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _codebook_w():
    return dcformat.encode_codebook("W", np.array([0.5], np.float32), np.zeros((32, 48), np.uint8))


def test_tensor_name_that_is_not_utf8(tmp_path):
    """fuzz_onnx_rebuild: protobuf hands out a string field holding invalid UTF-8 as bytes, and
    to_onnx(compact=True) died on ``proto.name + "::dcz_index"`` (TypeError). Such a graph is
    not a valid ModelProto: a FormatError when the graph is read."""
    from dcformat.graph import strip_weights

    from onnx import numpy_helper

    model = _matmul_model()
    model.graph.initializer.append(numpy_helper.from_array(np.full((32, 48), 0.5, np.float32), "W"))
    stripped, _ = strip_weights(model)
    data = stripped.SerializeToString()
    i = data.index(b"W", data.index(b"W") + 1)  # the initializer's own name (not the node input, not the reference)
    path = _graph_file(tmp_path / "name.dcz", data[:i] + b"\xff" + data[i + 1:], [_codebook_w()])
    for compact in (False, True):
        with pytest.raises(FormatError, match="not valid UTF-8"):
            dcformat.to_onnx(path, compact=compact)
    with dcformat.open(path) as r, pytest.raises(FormatError, match="not valid UTF-8"):
        r.graph


def test_stale_external_data_entries_are_not_references(tmp_path):
    """fuzz_onnx_rebuild (a false alarm of its own check, kept as a case): a tensor with a record
    reference in ``external_data`` but ``data_location`` DEFAULT is no reference. It holds its own
    (here: no) data; runtimes ignore the entries; ONNX Runtime rejects the empty tensor."""
    from onnx import TensorProto

    model = _matmul_model()
    t = model.graph.initializer.add()
    t.name, t.data_type = "W", TensorProto.FLOAT
    t.dims.extend([32, 48])
    for k, v in (("location", "dcz"), ("tensor", "W")):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = _graph_file(tmp_path / "stale.dcz", model.SerializeToString(), [_codebook_w()])
    m = dcformat.to_onnx(path)
    t = m.graph.initializer[0]
    assert t.data_location == TensorProto.DEFAULT and len(t.external_data) == 2 and not t.raw_data
    with pytest.raises(FormatError, match="ONNX Runtime cannot load"):
        dcformat.InferenceSession(path)


def test_harness_reports_what_is_not_a_dczerror(monkeypatch):
    """The harnesses let anything but DczError through (that is the crash libFuzzer reports)."""
    data = (ROOT / "spec" / "vectors" / "dense_f32.dcz").read_bytes()
    monkeypatch.setattr(fuzz_reader.dcformat, "open", lambda *a, **k: [][0])
    with pytest.raises(IndexError):
        fuzz_reader.test_one_input(data)


def test_checksum_bypass_is_restored():
    import dcformat.reader as reader_module

    before = reader_module.zlib
    with common.checksums_bypassed():
        assert reader_module.zlib.crc32(b"x") == 12345
    assert reader_module.zlib is before and before.crc32(b"x") != 12345


def test_mutator_is_deterministic_and_keeps_files_well_formed(corpus):
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.read_bytes().startswith(b"\x89DCZ")]
    a = [dczmut.mutate_with(random.Random(7), s, 8192, seeds) for s in seeds]
    b = [dczmut.mutate_with(random.Random(7), s, 8192, seeds) for s in seeds]
    assert a == b
    rebuilt = [dczmut.build(dczmut.parse(s)) for s in seeds]
    assert rebuilt == [s for s in seeds]  # parse + build is exact on valid files


# ============================================================================ a short fuzz run

IN_PROCESS_RUNS = {"reader": 300, "onnx_rebuild": 150, "inspect": 100}
ATHERIS_RUNS = {"reader": 4000, "onnx_rebuild": 1500, "inspect": 600}
ATHERIS_SECONDS = 25  # per harness, the three in parallel; the count above usually ends a run first


def test_short_fuzz_run_in_process(corpus):
    """Deterministic: the structure-aware mutator with a fixed seed, every harness in this process."""
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir())]
    for name, harness in HARNESSES.items():
        rng = random.Random(f"short-fuzz-{name}")
        for i in range(IN_PROCESS_RUNS[name]):
            data = dczmut.mutate_with(rng, rng.choice(seeds), 8192, seeds)
            try:
                harness.test_one_input(data)
            except BaseException as e:
                raise AssertionError(f"{name}: mutated input {i} ({len(data)} bytes) crashed: {e!r}") from e


@pytest.mark.skipif(common.atheris is None, reason="atheris is not installed")
def test_short_fuzz_run_atheris(corpus, tmp_path):
    """Coverage-guided: each harness under libFuzzer for a bounded number of executions, in parallel."""
    procs = {}
    for name in HARNESSES:
        work = tmp_path / name
        work.mkdir()
        cmd = [sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-atheris_runs={ATHERIS_RUNS[name]}",
               f"-max_total_time={ATHERIS_SECONDS}", "-max_len=8192", f"-dict={FUZZ / 'dcz.dict'}", "-seed=1",
               # no -timeout: atheris' per-input timer (SIGALRM) killed a child whose first input waited for numba
               # to compile the kernels on a busy machine (exit -14); communicate() below bounds the run instead
               "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/{name}-", str(work), str(corpus)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                       env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    failures = []
    for name, p in procs.items():
        out, _ = p.communicate(timeout=ATHERIS_SECONDS + 120)
        done = re.findall(r"Done (\d+) (?:runs )?in", out) or re.findall(r"^#(\d+)\s", out, re.M)
        crashed = p.returncode != 0 or "Uncaught Python exception" in out or list(tmp_path.glob(f"{name}-*"))
        if crashed or not done:
            failures.append(f"{name} (exit {p.returncode}):\n{out[-4000:]}")
        else:
            print(f"{name}: {done[-1]} executions")
    assert not failures, "\n\n".join(failures)
