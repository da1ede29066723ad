"""dcinspect --plot: bytes per layer by stream, and weight histograms with codebook centroids."""

from __future__ import annotations

import html
import io
import os

import numpy as np

from .errors import DczError

COLORS = {"gap": "#4C72B0", "index": "#DD8452", "codebook": "#55A868", "coded": "#8172B3", "raw": "#8C8C8C"}
LABELS = {"gap": "gap stream (sparse positions)", "index": "index stream (codebook indices)", "codebook": "codebook",
          "coded": "values coded losslessly (Huffman planes, lzma)", "raw": "raw values"}


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
    if len(name) > n:
        head = (n - 1) // 3  # the start says which block, the end which weight: cut the middle
        name = name[:head] + "…" + name[-(n - 1 - head):]
    return _plain(name)


def _bytes_axis(ax) -> None:
    """Bytes in units (B, kB, MB) instead of a '1e6' offset; a few ticks, so their labels never overlap."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    ax.xaxis.set_major_formatter(EngFormatter(unit="B", places=0, sep=" "))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, min_n_ticks=3))


def _value_axis(ax) -> None:
    """Weight values: at most 5 ticks with short labels ('-0.02', '5e-05', '0'), no offset text."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.2g}"))


def _bar_rows(report: dict, max_bars: int, min_share: float = 0.005):
    """The tensors worth a bar (the largest, each at least ``min_share`` of the stored bytes), and the
    rest folded into one row: a model's hundred 8-byte constants must not crowd out its layers."""
    rows = sorted(report["tensors"], key=lambda r: -r["bytes"])
    total = sum(r["bytes"] for r in rows) or 1
    big = [r for r in rows[:max_bars] if r["bytes"] >= min_share * total] or rows[:1]
    rest = rows[len(big):]
    if len(rest) == 1:
        big, rest = big + rest, []
    return big, rest


def figure(report: dict, reader=None, max_bars: int = 30, max_hists: int = 6, min_hist_params: int = 1024,
           progress=None, rug_above: int = 24):
    """A matplotlib Figure: stacked bars of stored bytes per tensor; histograms of the largest layers.

    ``progress(done, total, what)`` is called as each histogram's tensor is decoded and drawn.
    A layer with more than ``rug_above`` centroids shows them as a rug of ticks under its
    histogram (a line per centroid would hide the bars)."""
    plt = _matplotlib()
    big, rest = _bar_rows(report, max_bars)
    labels = [_short(r["name"]) for r in big]
    stacks = {s: [r[f"{s}_bytes"] for r in big] for s in COLORS}
    if rest:
        labels.append(f"{len(rest)} smaller tensors")
        for s in stacks:
            stacks[s].append(sum(r[f"{s}_bytes"] for r in rest))
    labels, stacks = labels[::-1], {s: v[::-1] for s, v in stacks.items()}
    hist_rows = []
    if reader is not None:
        cands = [r for r in report["tensors"] if r["params"] >= min_hist_params and r["encoding"] != "dense"]
        hist_rows = sorted(cands, key=lambda r: -r["params"])[:max_hists]
    ncols = min(3, max(len(hist_rows), 1))
    nh = (len(hist_rows) + ncols - 1) // ncols
    bar_h = max(0.3 * len(labels), 1.5) + 1.2
    fig = plt.figure(figsize=(12, bar_h + 3.2 * nh + 0.4), layout="constrained")
    gs = fig.add_gridspec(1 + nh, ncols, height_ratios=[bar_h] + [3.2] * nh)
    ax = fig.add_subplot(gs[0, :])
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for s in COLORS:
        v = np.array(stacks[s], float)
        if v.any():
            ax.barh(y, v, left=left, color=COLORS[s], label=LABELS[s])
        left += v
    ax.set_yticks(y, labels, fontsize=8)
    if rest:
        ax.get_yticklabels()[0].set_fontstyle("italic")
    ax.set_xlabel("stored bytes", fontsize=9)
    _bytes_axis(ax)
    ax.tick_params(axis="x", labelsize=8)
    title = f"{_plain(os.path.basename(report['file']))}: {report['size']:,} bytes"
    if report["totals"]["params"]:
        title += f", {report['totals']['params']:,} parameters, {report['totals']['ratio']:.1f}x smaller than fp32"
    ax.set_title(title, fontsize=10, loc="left")
    # beside the bars, not over them: inside the axes any corner may hold the longest bar
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, borderaxespad=0.5)
    total = sum(r["bytes"] for r in report["tensors"]) or 1
    for yi in y:
        ax.text(left[yi], yi, f"  {int(left[yi]):,} B ({left[yi] / total:.0%})", va="center", fontsize=7)
    # room for the labels after the bars (margins cannot do it: a stack of width 0 drawn at the end of the
    # longest bar pins the axis there)
    ax.set_xlim(0, max(float(left.max()) if left.size else 0.0, 1.0) * 1.22)
    ax.spines[["top", "right"]].set_visible(False)
    for i, r in enumerate(hist_rows):
        if progress:
            progress(i, len(hist_rows), r["name"])
        hax = fig.add_subplot(gs[1 + i // ncols, i % ncols])
        w = np.asarray(reader[r["name"]], dtype=np.float64).reshape(-1)
        nz = w[(w != 0) & np.isfinite(w)]
        span_ok = not nz.size or np.isfinite(float(nz.max()) - float(nz.min()))  # +-1.7e308: the bins overflow
        if not span_ok:
            hax.text(0.5, 0.5, "values span more than\nthe float64 range", ha="center", va="center",
                     transform=hax.transAxes, fontsize=8)
        info = reader.info(r["name"])
        # with per-channel scales (1.2) the values are centroid x scale: no shared set of lines to draw
        centroids = np.unique(nz) if info.codebook_size and not info.scaled else np.zeros(0)
        if nz.size and span_ok:
            hax.hist(nz, bins=min(100, max(10, int(np.sqrt(nz.size)))), color="#4C72B0", alpha=0.85, zorder=2)
        if 0 < centroids.size <= rug_above:
            for c in centroids:
                hax.axvline(c, color="#C44E52", lw=0.7, alpha=0.6, zorder=1)
            how = "centroids as red lines"
        elif centroids.size:  # a rug: one short tick per centroid, in a band of its own under the bars
            top = hax.get_ylim()[1]
            hax.set_ylim(-0.09 * top, top)
            hax.plot(centroids, np.full(centroids.size, -0.045 * top), "|", color="#C44E52", ms=7, mew=0.7, zorder=3)
            hax.axhline(0, color="#888888", lw=0.5, zorder=1)
            how = "centroids as ticks below"
        else:
            how = f"x {info.scale_count} scales, axis {info.scale_axis}" if info.scaled else "no codebook"
        hax.set_title(f"{_short(r['name'], 34)}\n{r['sparsity']:.0%} zero, {info.codebook_size or 'no'} centroids\n"
                      f"({how})", fontsize=8)  # three short lines: a long second line ran into the next title
        hax.set_xlabel("weight value (non-zero)", fontsize=8)
        hax.set_ylabel("count", fontsize=8)
        hax.tick_params(labelsize=7)
        if nz.size and span_ok:
            _value_axis(hax)
        hax.spines[["top", "right"]].set_visible(False)
    if progress:
        progress(len(hist_rows), len(hist_rows), "")
    return fig


def save(report: dict, out: str, reader=None, progress=None) -> None:
    """Write the plot as .png, .svg or .html (an SVG with the per-tensor table), atomically: the file
    appears complete or not at all (a full disk leaves nothing).

    ``progress(done, total, what)``: see :func:`figure`; called once more with what='writing'."""
    from .atomic import atomic_output

    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".svg", ".html", ".htm"):
        raise DczError(f"--plot: unknown picture type {ext or '(none)'}; use .png, .svg or .html")
    plt = _matplotlib()
    try:
        fig = figure(report, reader, progress=progress)
        if progress:
            progress(1, 1, "writing " + os.path.basename(out))
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
