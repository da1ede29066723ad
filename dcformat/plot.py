"""dcinspect --plot: bytes per layer by stream, and weight histograms with codebook centroids."""

from __future__ import annotations

import html
import io
import os

import numpy as np

from .errors import DczError

COLORS = {"gap": "#4C72B0", "index": "#DD8452", "codebook": "#55A868", "raw": "#8C8C8C"}


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DczError("--plot needs matplotlib: pip install 'dcz[plot]'") from None
    return plt


def _plain(text: str) -> str:
    """Text matplotlib shows as it is: ``$`` starts mathtext (``$\\frac{$`` would raise a ParseException)."""
    return text.replace("$", r"\$")


def _short(name: str, n: int = 40) -> str:
    name = "".join(c if c.isprintable() else "?" for c in name)
    return _plain(name if len(name) <= n else "…" + name[-(n - 1):])


def figure(report: dict, reader=None, max_bars: int = 30, max_hists: int = 6, min_hist_params: int = 1024):
    """A matplotlib Figure: stacked bars of stored bytes per tensor; histograms of the largest layers."""
    plt = _matplotlib()
    rows = sorted(report["tensors"], key=lambda r: -r["bytes"])[:max_bars][::-1]
    hist_rows = []
    if reader is not None:
        big = [r for r in report["tensors"] if r["params"] >= min_hist_params and r["encoding"] != "dense"]
        hist_rows = sorted(big, key=lambda r: -r["params"])[:max_hists]
    ncols = 3
    nh = (len(hist_rows) + ncols - 1) // ncols
    fig = plt.figure(figsize=(12, 0.32 * max(len(rows), 4) + 1.6 + 3.0 * nh), layout="constrained")
    heights = [max(0.32 * len(rows), 1.5) + 1.2] + [3.0] * nh
    gs = fig.add_gridspec(1 + nh, ncols, height_ratios=heights)
    ax = fig.add_subplot(gs[0, :])
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for s in ("gap", "index", "codebook", "raw"):
        v = np.array([r[f"{s}_bytes"] for r in rows], float)
        if v.any():
            ax.barh(y, v, left=left, color=COLORS[s], label=f"{s} stream" if s in ("gap", "index") else s)
        left += v
    ax.set_yticks(y, [_short(r["name"]) for r in rows], fontsize=8)
    ax.set_xlabel("stored bytes")
    title = f"{_plain(os.path.basename(report['file']))}: {report['size']:,} bytes"
    if report["totals"]["params"]:
        title += f", {report['totals']['params']:,} parameters, {report['totals']['ratio']:.1f}x smaller than fp32"
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(loc="lower right", fontsize=8)
    for yi, r in zip(y, rows):
        ax.text(left[yi], yi, f" {r['bytes']:,}", va="center", fontsize=7)
    ax.margins(x=0.12)
    for i, r in enumerate(hist_rows):
        hax = fig.add_subplot(gs[1 + i // ncols, i % ncols])
        w = np.asarray(reader[r["name"]], dtype=np.float64).reshape(-1)
        nz = w[(w != 0) & np.isfinite(w)]
        if nz.size and not np.isfinite(float(nz.max()) - float(nz.min())):  # +-1.7e308: the bins overflow
            hax.text(0.5, 0.5, "values span more than\nthe float64 range", ha="center", va="center",
                     transform=hax.transAxes, fontsize=8)
        else:
            hax.hist(nz, bins=120, color="#4C72B0", alpha=0.85)
        info = reader.info(r["name"])
        if info.codebook_size:
            for c in np.unique(nz):
                hax.axvline(c, color="#C44E52", lw=0.6, alpha=0.7)
        hax.set_title(f"{_short(r['name'], 32)}: {r['sparsity']:.0%} zero, "
                      f"{info.codebook_size or 'no'} centroids", fontsize=8)
        hax.set_xlabel("weight value (non-zero)", fontsize=8)
        hax.set_ylabel("count", fontsize=8)
        hax.tick_params(labelsize=7)
    return fig


def save(report: dict, out: str, reader=None) -> None:
    """Write the plot as .png, .svg or .html (an SVG with the per-tensor table), atomically: the file
    appears complete or not at all (a full disk leaves nothing)."""
    from .atomic import atomic_output

    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".svg", ".html", ".htm"):
        raise DczError(f"--plot: unknown picture type {ext or '(none)'}; use .png, .svg or .html")
    plt = _matplotlib()
    try:
        fig = figure(report, reader)
        try:
            buf = io.BytesIO()
            if ext in (".png", ".svg"):
                fig.savefig(buf, format=ext[1:], dpi=110, metadata={"Date": None} if ext == ".svg" else None)
                data = buf.getvalue()
            else:
                text = io.StringIO()
                fig.savefig(text, format="svg", metadata={"Date": None})
                data = _html(report, text.getvalue()).encode("utf-8")
        finally:
            plt.close(fig)
    except DczError:
        raise
    except (ValueError, RuntimeError, OverflowError, MemoryError) as e:  # matplotlib's own errors
        from .errors import first_line

        raise DczError(f"--plot: cannot draw the plot: {first_line(e)}") from None
    try:
        with atomic_output(out, suffix=ext + ".tmp") as f:
            f.write(data)
    except OSError as e:
        raise DczError(f"--plot: cannot write {out}: {e.strerror or e}") from None


def _html(report: dict, svg: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("tensor", "shape", "params", "encoding", "sparsity", "bytes", "x fp32"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["name"], "x".join(map(str, r["shape"])), f"{r['params']:,}", r["encoding"],
            "-" if r["sparsity"] is None else f"{r['sparsity']:.1%}", f"{r['bytes']:,}",
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}")) + "</tr>"
        for r in report["tensors"])
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(report['file'])}</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}"
            f"td:first-child{{text-align:left}}</style>{svg}"
            f"<table><tr>{head}</tr>{body}</table>")
