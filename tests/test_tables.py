"""Every table of the command-line tools, on a terminal 80 and 100 columns wide: every name and
every number printed whole, no line wider than the terminal, left-out columns named.

The tables are rendered as a user sees them: stdout is a terminal (rich lays the table out)
whose width rich reads from $COLUMNS, as it does on a real one.
"""

import io
import re
import sys

import numpy as np
import pytest

import dcformat
from dcformat import cli, table

WIDTHS = [80, 100]
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\]8;[^\x1b]*\x1b\\")
MARKUP_NAMES = ["[/]", "[link=file:///etc/passwd]click me[/link]", "[bold]x[/bold] :smile:"]
NAMES = [f"model.encoder.layers.{i}.self_attn.{p}_proj.{k}" for i in range(2) for p in "qkv" for k in ("weight", "bias")]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Run ``fn`` with stdout a terminal ``width`` columns wide; returns what it printed (raw)."""

    def run(fn, width):
        term = Terminal()
        monkeypatch.setenv("COLUMNS", str(width))
        monkeypatch.setattr(sys, "stdout", term)
        try:
            fn()
        except SystemExit as e:
            assert e.code == 0
        finally:
            monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        return term.getvalue()

    return run


def check_table(out: str, width: int, columns: list[str], rows: list[list[str]], drop: list[str],
                footer: list[str] | None = None) -> list[str]:
    """Assert the table in ``out`` shows every row whole; returns the columns shown."""
    assert "\x1b]8;" not in out  # no hyperlink escape: names are text, not markup
    text = ANSI.sub("", out)
    lines = text.splitlines()
    shown, widths = table.layout(columns, [[cli._escape(c) for c in r] for r in rows], width, drop, footer)
    assert 0 in shown and widths[0] >= 10
    names = [columns[i] for i in shown]
    hidden = [c for c in columns if c not in names]
    if hidden:  # named under the table
        note = " ".join(text[text.index("left out to fit"):].split())
        assert all(c in note for c in hidden), note
    w0 = widths[0]
    rules = [i for i, line in enumerate(lines) if line.startswith("─" * 10)]
    body = lines[rules[0] + 1:rules[1] if len(rules) > 1 else None]
    assert max(len(line.rstrip()) for line in lines[max(0, rules[0] - 2):rules[-1] + 2]) <= width, text
    for r in rows:
        n = len(table.wrap_name(cli._escape(r[0]), w0).split("\n"))
        # a row whose name, read down its column, is whole, and whose numbers are whole, each in its column
        assert any("".join(line[:w0].rstrip() for line in body[i:i + n]) == cli._escape(r[0])
                   and body[i][w0:].split() == [r[j] for j in shown[1:] if r[j]]
                   and all(not line[w0:].strip() for line in body[i + 1:i + n]) for i in range(len(body))), r
    return names


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = []
    for n in NAMES:
        if n.endswith("weight"):
            idx = np.where(rng.random((96, 96)) < 0.8, 0, rng.integers(1, 20, (96, 96)))
            tensors.append(dcformat.encode_codebook(n, np.linspace(-1, 1, 20).astype(np.float32) * (np.arange(20) > 0), idx))
        else:
            tensors.append(dcformat.encode(n, rng.standard_normal(96).astype(np.float32), encoding="raw"))
    tensors.append(dcformat.encode_codebook("embed.weight", np.linspace(-1, 1, 256).astype(np.float32),
                                            rng.integers(0, 256, (3000, 96)), encoding="codebook-dense"))
    tensors.append(dcformat.encode_codebook("conv.weight", np.linspace(-1, 1, 16).astype(np.float32),  # 1.2: scaled
                                            rng.integers(0, 16, (256, 3, 3, 3)), scales=np.linspace(0.1, 2, 256),
                                            scale_dtype="float16", encoding="codebook-dense"))
    for n in MARKUP_NAMES:
        tensors.append(dcformat.encode(n, rng.standard_normal(80).astype(np.float32), encoding="raw"))
    for i in range(5):  # LayerNorm-sized: summed in one row
        tensors.append(dcformat.encode(f"norm{i}.scale", np.ones(8, np.float32), encoding="raw"))
    p = tmp_path / "m.dcz"
    dcformat.write(p, tensors, metadata={"producer": "test [/]", "fidelity": {"max_error": 0.012, "cosine": 0.9991,
                                                                                "per_output": {"logits": {"cosine": 0.99}}}})
    return p


@pytest.mark.parametrize("width", WIDTHS)
def test_dcinspect_table(model, terminal, width):
    out = terminal(lambda: cli.inspect_main([str(model)]), width)
    rep = dcformat.inspect.inspect_dcz(model)
    cols, rows, footer, small = cli._report_table(rep, rep["tensors"])
    assert len(small) == 5 and len(rows) == len(rep["tensors"]) - 5 + 1
    shown = check_table(out, width, cols, rows, cli.DROP, footer)
    assert {"tensor", "shape", "params", "sparsity", "bits", "total B"} <= set(shown)
    assert "norm0.scale" not in out and "+ 5 small tensors" in out
    assert "max_error: 0.012" in out and "cosine: 0.9991" in out and "fidelity" in out  # stored fidelity, key/value
    assert "producer: test [/]" in out
    full = terminal(lambda: cli.inspect_main([str(model), "--all"]), width)
    assert "norm0.scale" in full and "small tensors" not in full


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_table(model, tmp_path, terminal, width):
    other = tmp_path / "o.dcz"
    with dcformat.open(model) as r:
        dcformat.write(other, [dcformat.encode(n, r[n], encoding="raw") for n in r])
    out = terminal(lambda: cli.inspect_main([str(model), str(other)]), width)
    reps = [dcformat.inspect.inspect_dcz(p) for p in (model, other)]
    a, b = ({r["name"]: r for r in rep["tensors"]} for rep in reps)
    cols = ["tensor", "[1] bytes", "[1] sparsity", "[1] bits", "[2] bytes", "[2] sparsity", "[2] bits", "[2]/[1]"]
    rows = [[n, f"{a[n]['bytes']:,}", f"{a[n]['sparsity']:.1%}", "-" if a[n]["bits"] is None else str(a[n]["bits"]),
             f"{b[n]['bytes']:,}", f"{b[n]['sparsity']:.1%}", "-", f"{b[n]['bytes'] / a[n]['bytes']:.3f}"] for n in a]
    drop = ["[2] bits", "[2] sparsity", "[1] bits", "[1] sparsity"]
    s1, s2 = (rep["size"] for rep in reps)
    shown = check_table(out, width, cols, rows, drop, ["file size", f"{s1:,}", "", "", f"{s2:,}", "", "", f"{s2 / s1:.3f}"])
    assert {"[1] bytes", "[2] bytes", "[2]/[1]"} <= set(shown)


@pytest.mark.parametrize("width", WIDTHS)
def test_dcconvert_summary(tmp_path, terminal, width):
    safetensors = pytest.importorskip("safetensors.numpy")
    from converters import cli as ccli
    from converters import compress as cmp

    rng = np.random.default_rng(1)
    weights = {n: rng.standard_normal((64, 96) if n.endswith("weight") else (64,)).astype(np.float32) for n in NAMES}
    weights[MARKUP_NAMES[1]] = rng.standard_normal(700).astype(np.float32)
    weights.update({f"norm{i}.scale": np.ones(8, np.float32) for i in range(5)})  # small: summed in one row
    src = tmp_path / "m.safetensors"
    safetensors.save_file(weights, str(src))
    result = ccli.convert(str(src), str(tmp_path / "m.dcz"), cmp.Settings())
    out = terminal(lambda: ccli.summary(result), width)
    cols, rows, footer, small = ccli.summary_table(result)
    assert cols[:4] == ["tensor", "shape", "params", "role"]
    assert [r[0] for r in rows] == [r["name"] for r in result["layers"] if r not in small] + (
        [f"+ {len(small)} small tensors"] if small else [])
    shown = check_table(out, width, cols, rows, ccli.SUMMARY_DROP, footer)
    assert {"tensor", "params", "sparsity", "bits", "bytes"} <= set(shown)
    assert len(small) == 5 and "norm0.scale" not in out and "+ 5 small tensors: those of fewer than 64" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_layer_table(terminal, width):
    from converters.pipeline_cli import print_layer_table

    rows = [{"name": n, "shape": "256x128", "params": 32768, "encoding": "codebook-sparse", "sparsity": 0.9,
             "codebook": 32, "gap_bits": 4, "bytes": 5123, "ratio": 25.6} for n in ["fc1.weight", "fc2.weight"] + NAMES[:2]]
    rows.append({"name": "fc1.bias", "shape": "256", "params": 256, "encoding": "raw", "sparsity": 0.0, "codebook": None,
                 "gap_bits": None, "bytes": 1024, "ratio": 1.0})
    plan = {r["name"]: {"bits": 5} for r in rows[:-1]}
    out = terminal(lambda: print_layer_table(rows, plan), width)
    cols = ["tensor", "shape", "params", "encoding", "sparsity", "bits", "centroids", "gap bits", "bytes", "bits/param",
            "x fp32"]
    cells = [[r["name"], r["shape"], f"{r['params']:,}", r["encoding"], f"{r['sparsity']:.1%}",
              "5" if r["name"] in plan else "-", "-" if r["codebook"] is None else str(r["codebook"]),
              "-" if r["gap_bits"] is None else str(r["gap_bits"]), f"{r['bytes']:,}",
              f"{8 * r['bytes'] / r['params']:.2f}", f"{r['ratio']:.1f}"] for r in rows]
    params, nbytes = sum(r["params"] for r in rows), sum(r["bytes"] for r in rows)
    zeros = sum(r["sparsity"] * r["params"] for r in rows)
    footer = ["total", "", f"{params:,}", "", f"{zeros / params:.1%}", "", "", "", f"{nbytes:,}",
              f"{8 * nbytes / params:.2f}", f"{4 * params / nbytes:.1f}"]
    shown = check_table(out, width, cols, cells, ["gap bits", "centroids", "bits/param", "encoding", "x fp32", "shape"],
                        footer)
    assert {"tensor", "params", "sparsity", "bits", "bytes"} <= set(shown)


def test_long_names_wrap_whole_and_markup_is_text():
    """A name wider than its column wraps (after '.' where it can); nothing is markup; a terminal too
    narrow for any layout gets the plain table rather than a clipped one."""
    from rich.console import Console

    name = "a.very.long.module.path." * 6 + "weight"
    rows = [[name, "1,234,567", "12.5%"], ["[/]", "8", "0.0%"], ["x\x1b[31m", "1", "1.0%"]]
    for width in (40, 80):
        con = Console(file=io.StringIO(), width=width, color_system=None)
        table.render(None, ["tensor", "params", "sparsity"], rows, right={"params", "sparsity"}, console=con)
        out = con.file.getvalue()
        assert max(map(len, out.splitlines())) <= width
        assert "1,234,567" in out and "[/]" in out and "\x1b" not in out and "x\\x1b[31m" in out
        shown, widths = table.layout(["tensor", "params", "sparsity"], rows, width)
        col = "".join(line[:widths[0]].rstrip() for line in out.splitlines()[2:])
        assert name in col
    con = Console(file=io.StringIO(), width=12, color_system=None)
    table.render(None, ["tensor", "params"], [["abcdefghijkl", "1,234,567"]], console=con)
    assert "1,234,567" in con.file.getvalue() and "abcdefghijkl" in con.file.getvalue()


def test_dcconvert_names_few_tensors_kept_raw_for_one_reason_and_counts_many():
    """A VAD's 18 subgraph copies kept raw for one reason are one line (count, params, the largest),
    not 18; up to MAX_KEPT_LINES are named one a line."""
    from converters import cli as ccli

    def layer(name, params, why):
        return {"name": name, "params": params, "action": "kept", "reason": why}

    sub = [layer(f"If_0.then_branch/w{i}", 100 * (i + 1), "in a Constant node or subgraph") for i in range(18)]
    few = [layer(f"fc{i}.weight", 4096, "error budget") for i in range(ccli.MAX_KEPT_LINES)]
    lines = ccli.fidelity_lines({"layers": sub + few})
    assert lines[-ccli.MAX_KEPT_LINES:] == [f"kept raw: fc{i}.weight (4,096 params): error budget"
                                            for i in range(ccli.MAX_KEPT_LINES)]
    assert lines[0] == ("kept raw: 18 tensor(s), 17,100 params: in a Constant node or subgraph (largest: "
                        "If_0.then_branch/w17, If_0.then_branch/w16, If_0.then_branch/w15; --json lists them)")
    assert len(lines) == 1 + ccli.MAX_KEPT_LINES
