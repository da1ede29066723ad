"""Killing dcconvert (SIGKILL) at random moments never leaves a partial or corrupt .dcz at
the output path: there is either no file, the previous complete file, or the new complete
file. The temporary file is unnamed where the system supports O_TMPFILE (Linux): then no
``.*.dcz.tmp`` file ever stays behind; elsewhere one may, never at the output path, and the
next write to that output removes it (dcformat/atomic.py).

Half of the kills come at a random moment of the whole run (start-up included), the other
half late in the run, while the output is being written.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from converters.cli import main

DCCONVERT = Path(sys.executable).parent / "dcconvert"
KILLS = 12
SEED = 20240229
TEMP = re.compile(r"^\.[^/]+\.dcz\.tmp$")


def build(path: Path) -> None:
    """About 1.6M parameters: three Gemm layers and their biases."""
    rng = np.random.default_rng(0)
    sizes = [1024, 1024, 512, 256]
    inits, nodes, x = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32), f"fc{i}.weight"),
                  numpy_helper.from_array((rng.standard_normal(n_out) * 0.05).astype(np.float32), f"fc{i}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"], transB=1))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    src = d / "big.onnx"
    build(src)
    ref = d / "ref.dcz"
    t0 = time.perf_counter()
    p = subprocess.run([str(DCCONVERT), str(src), "-o", str(ref), "-q", "--bits", "6"], capture_output=True, text=True,
                       timeout=300)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    prev = d / "prev.dcz"  # a good earlier output of other settings
    with pytest.raises(SystemExit) as e:
        main([str(src), "-o", str(prev), "-q", "--bits", "2", "--sparsity", "0.9"])
    assert e.value.code == 0
    assert prev.read_bytes() != ref.read_bytes()
    return src, ref.read_bytes(), prev.read_bytes(), seconds


def _temp_files(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if TEMP.match(n)]


def test_sigkill_never_leaves_a_partial_output(setup, tmp_path):
    src, ref, prev, seconds = setup
    rng = random.Random(SEED)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.dcz"
    outcomes = []
    for i in range(KILLS):
        had_previous = (i // 2) % 2 == 0
        if had_previous:
            out.write_bytes(prev)
        else:
            out.unlink(missing_ok=True)
        on_temp = i % 2 == 1
        delay = rng.uniform(0, 0.004) if on_temp else rng.uniform(0, 1.1 * seconds)
        p = subprocess.Popen([str(DCCONVERT), str(src), "-o", str(out), "-q", "--bits", "6"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t0 = time.perf_counter()
            if on_temp:  # late in the run: while the output is written (O_TMPFILE: no name to wait for)
                try:
                    p.wait(timeout=rng.uniform(0.85, 1.0) * seconds)
                except subprocess.TimeoutExpired:
                    pass
            else:
                try:
                    p.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    pass
            finished = p.poll() is not None
            if not finished:
                p.kill()  # SIGKILL, this process only
            else:  # the machine got faster (less load than when setup timed a run): aim the next kills earlier
                seconds = min(seconds, time.perf_counter() - t0)
        finally:
            p.wait(timeout=60)
        temps = _temp_files(out_dir)
        names = set(os.listdir(out_dir))
        assert names <= {"model.dcz", *temps}, names  # nothing else, and no temporary name at the output path
        if out.exists():
            data = out.read_bytes()
            if data == ref:
                with dcformat.open(out) as r:
                    r.verify()
                state = "new"
            else:
                assert had_previous and data == prev, f"kill {i}: a partial or foreign file at the output path"
                state = "previous"
        else:
            assert not had_previous, f"kill {i}: the previous output vanished"
            state = "none"
        outcomes.append((on_temp, finished, state, bool(temps)))
        print(f"kill {i}: {'on temp file' if on_temp else f'after {delay:.2f} s'}, "
              f"{'finished first' if finished else 'killed'}, output {state}, temporary files {len(temps)}")
        for n in temps:
            os.unlink(out_dir / n)
    # the test did what it says: processes were killed, some of them with the temporary file half written
    # (the kill times follow the measured run time, so a change of machine load moves them only a little)
    killed = [o for o in outcomes if not o[1]]
    assert len(killed) >= KILLS // 3, outcomes
    if _unnamed_temporaries(out_dir):
        assert not any(o[3] for o in outcomes), outcomes  # nothing left behind, whenever the kill came


def _unnamed_temporaries(directory) -> bool:
    from dcformat.atomic import _unnamed

    fd = _unnamed(str(directory))
    if fd is None:
        return False
    os.close(fd)
    return True


def test_previous_output_survives_a_failed_conversion(setup, tmp_path):
    """A conversion that fails late (pattern matching nothing is checked after loading) keeps the old file."""
    src, ref, prev, _ = setup
    out = tmp_path / "model.dcz"
    out.write_bytes(prev)
    p = subprocess.run([str(DCCONVERT), str(src), "-o", str(out), "--bits", "conv*=4"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: ")
    assert out.read_bytes() == prev and sorted(os.listdir(tmp_path)) == ["model.dcz"]


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path, monkeypatch):
    """Where temporaries have names (no O_TMPFILE), one left by a writer that no longer runs is removed by
    the next write to the same output; a live writer's is kept, and so are other files' temporaries."""
    import dcformat.atomic as atomic

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = p.pid  # exited and reaped: no such process (pids are not reused this fast)
    stale = tmp_path / f".model.dcz.{dead}-abc123.dcz.tmp"
    live = tmp_path / f".model.dcz.1-def456.dcz.tmp"  # pid 1 runs
    other = tmp_path / f".other.dcz.{dead}-abc123.dcz.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    monkeypatch.setattr(atomic, "_unnamed", lambda directory: None)  # the named fallback
    dcformat.write(tmp_path / "model.dcz", [dcformat.encode_raw("w", np.zeros(3, np.float32))])
    assert sorted(os.listdir(tmp_path)) == sorted(["model.dcz", live.name, other.name])
    monkeypatch.undo()
    dcformat.write(tmp_path / "model.dcz", [dcformat.encode_raw("w", np.ones(3, np.float32))])  # O_TMPFILE if any
    assert sorted(os.listdir(tmp_path)) == sorted(["model.dcz", live.name, other.name])
    assert np.array_equal(dcformat.load_weights(tmp_path / "model.dcz")["w"], np.ones(3, np.float32))
