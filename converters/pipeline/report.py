"""What a run shows: stage messages, console progress, report.json and the sensitivity / pruning plots."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ConvertError
from .plan import Scan
from .train import Progress

if TYPE_CHECKING:
    from .run import Result


def _emit(progress, message, **kw):
    if progress:
        progress({"kind": "stage", "message": message, **kw})


def save_report(res: Result, report_dir) -> list[str]:
    """report.json (and the sensitivity plots when there was a scan) in ``report_dir``."""
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, "report.json")
    with open(path, "w") as f:
        json.dump(res.report(), f, indent=1, default=str)
    paths = [path]
    if res.scan:
        paths += plot_scan(res.scan, report_dir, plan=res.plan)
    return paths


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvertError("the plots need matplotlib: pip install 'dcz[plot]'") from None
    return plt


def plot_scan(scan: Scan, out_dir, plan: Mapping | None = None) -> list[str]:
    """sensitivity_sparsity.png (accuracy vs sparsity per layer) and sensitivity_bits.png."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, xlabel, fname in (("sparsity", "sparsity of the layer (others dense, no retraining)", "sensitivity_sparsity.png"),
                               ("bits", "weight-sharing bits of the layer (others dense)", "sensitivity_bits.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for name, pts in getattr(scan, key).items():
            pts = ([[0.0, scan.dense]] if key == "sparsity" else []) + list(pts)
            xs, ys = zip(*pts)
            line, = ax.plot(xs, ys, marker="o", ms=3, label=name)
            if plan and name in plan and plan[name].get(key) is not None:
                ax.axvline(plan[name][key], color=line.get_color(), ls=":", lw=1)
        ax.axhline(scan.dense, color="gray", lw=0.8, ls="--", label=f"dense {scan.dense:.2f}%")
        ax.set_xlabel(xlabel + ("; dotted: chosen" if plan else ""))
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"sensitivity: accuracy vs {key} per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, fname)
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_pruning_curves(curves: Mapping, path, title: str = "weight vs neuron pruning") -> str:
    """Accuracy vs pruned fraction, one line per method (dashed: after retraining)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for method in ("weight", "neuron"):
        pts = curves.get(method)
        if not pts:
            continue
        xs = [p["fraction"] * 100 for p in pts]
        line, = ax.plot(xs, [p["accuracy"] for p in pts], marker="o", ms=3, label=f"{method} pruning")
        if any(p.get("retrained") is not None for p in pts):
            ax.plot(xs, [p["retrained"] for p in pts], marker="s", ms=3, ls="--", color=line.get_color(),
                    label=f"{method} pruning, retrained")
    if "dense" in curves:
        ax.axhline(curves["dense"], color="gray", lw=0.8, ls="--", label=f"dense {curves['dense']:.2f}%")
    ax.set_xlabel("pruned fraction per layer (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    d = os.path.dirname(os.fspath(path))
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return os.fspath(path)


def echo_stages(echo, then: Progress | None = None) -> Progress:
    """A progress callback: stage messages go to ``echo`` (a print), other events to ``then``."""
    def progress(ev: dict):
        if ev.get("kind") == "stage" and ev.get("message"):
            echo(ev["message"])
        elif then:
            then(ev)

    return progress


def console_progress(file=None, epochs: bool = True, stages: bool = True) -> Progress | None:
    """A progress callback printing epochs (loss, accuracy, sparsity) and stages with rich,
    or None when ``file`` (default stderr) is not a terminal."""
    file = file or sys.stderr
    if not getattr(file, "isatty", lambda: False)():
        return None
    from rich.console import Console

    console = Console(file=file, highlight=False)

    def show(ev: dict):
        if ev.get("kind") == "epoch" and epochs:
            acc = "" if ev.get("accuracy") is None else f"  accuracy {ev['accuracy']:6.2f}%"
            step = f" {ev['step']}" if ev.get("step") else ""
            console.print(f"[dim]{ev['phase']}{step} epoch {ev['epoch']}/{ev['epochs']}  loss {ev['loss']:.4f}{acc}"
                          f"  sparsity {ev['sparsity']:.1%}[/dim]")
        elif ev.get("kind") == "stage" and stages and ev.get("message"):
            console.print(ev["message"], markup=False)

    return show
