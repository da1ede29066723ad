"""Fuzz dcinspect: dcformat.inspect.inspect_dcz, verify_report, and the dcinspect command
itself (--json, --verify and the table), run in-process through dcformat.cli.inspect_main.

    python tools/fuzz/fuzz_inspect.py -max_len=8192 -dict=tools/fuzz/dcz.dict CORPUS_DIR

Crashes: inspect_dcz raising anything but DczError; verify_report raising at all; the
command exiting with a code other than 0 or 1, writing more than one line to stderr on
failure or anything at all on success, or printing --json output that is not JSON. The
input is written as ``input.dcz``, but dcinspect sniffs content first, so inputs that do
not start with the .dcz magic reach its ONNX and safetensors readers too.
"""

from __future__ import annotations

import contextlib
import io
import json
import zlib

import common

try:  # dcinspect reads PyTorch files; import torch now, not during the first input that sniffs as one
    import torch  # noqa: F401
except ImportError:
    pass

with common.instrumented(__name__ == "__main__"):
    from dcformat import cli
    from dcformat import inspect as insp


def _cli(args, run):
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.inspect_main(args)
        except SystemExit as e:
            code = e.code
    assert code in (0, 1), f"dcinspect {args[1:]} exited with {code!r}; stderr: {err.getvalue()[:2000]}"
    lines = err.getvalue().splitlines()
    if code == 1 and "--verify" not in args:
        assert len(lines) == 1 and lines[0].startswith("error: "), \
            f"dcinspect {args[1:]}: stderr is not one error line: {err.getvalue()[:2000]!r}"
    else:  # success, or --verify reporting damage on stdout
        assert not lines, f"dcinspect {args[1:]} succeeded but wrote to stderr: {err.getvalue()[:2000]!r}"
    return code, out.getvalue()


def exercise(path, run, all_commands=True):
    rep = run(insp.inspect_dcz, path)
    if rep is not None:
        json.dumps(rep, default=str)
        assert rep["size"] == rep["totals"]["tensor_bytes"] + rep["overhead"]["total"]
    items, ok = insp.verify_report(path)
    assert ok == all(err is None for _, err in items)
    items, ok, _ = insp.verify_any(path)  # what --verify reports: other model files are checked as what they are
    assert ok == all(err is None for _, err in items)
    code, out = _cli([path, "--json"], run)
    if code == 0:
        json.loads(out)
    if all_commands:
        code, out = _cli([path, "--verify"], run)
        assert (code == 0) == ok, f"dcinspect --verify exited with {code}, verify_report says ok={ok}"
        _cli([path], run)


def test_one_input(data: bytes) -> None:
    # click's argument parsing dominates: the table and --verify only for a quarter of the inputs
    every = zlib.crc32(data) % 4 == 0
    common.run_both_modes(data, lambda path, run: exercise(path, run, every))


TestOneInput = test_one_input

if __name__ == "__main__":
    common.main(test_one_input)
