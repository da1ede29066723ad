"""Calibration inputs and measured fidelity for dcconvert: which inputs a model is run on, and how
far the compressed model's outputs are from the original's (dcformat.fidelity's metrics)."""

from __future__ import annotations

import numpy as np

from dcformat import fidelity
from dcformat import inputs as inp

from .defaults import DEFAULT_MAX_ERROR, WARN_COSINE  # noqa: F401 (re-exported)


HOLD_OUT_SHARE = 0.25  # of the calibration samples, kept out of the search to verify its result
MIN_HOLD_OUT = 2
MIN_FIT = 4  # fewer samples than MIN_FIT + MIN_HOLD_OUT: nothing is held out


def split(calib: dict, decl) -> tuple[dict, dict | None]:
    """(samples the search fits on, held-out samples or None): the last HOLD_OUT_SHARE of the set
    (at least MIN_HOLD_OUT) is held out, where at least MIN_FIT samples stay to fit on."""
    n = inp.num_samples(calib, decl) if decl else 0
    k = max(MIN_HOLD_OUT, int(round(n * HOLD_OUT_SHARE)))
    if n - k < MIN_FIT:
        return calib, None
    return {name: v[: n - k] for name, v in calib.items()}, {name: v[n - k:] for name, v in calib.items()}


SIZE_SCALES = inp.SIZE_SCALES  # tried in turn when the model does not run on the default synthetic sizes


def calibration(graph, path=None, samples: int | None = None, dims: dict | None = None, seed: int = 0,
                scale: float = 1.0, tie: bool = False, fixed: dict | None = None):
    """(declared inputs, calibration set, description) for an ONNX graph (``scale``, ``tie``: of the
    synthetic inputs' sizes, see dcformat.inputs.sample_shapes; ``fixed``: input name -> constant value)."""
    decl = inp.declared_inputs(graph)
    if not decl:
        return decl, {}, {"source": "none (the model takes no inputs)", "samples": 1, "synthetic": False}
    if path is not None:
        calib = inp.load_calibration(path, decl, samples)
        desc = {"source": str(path), "synthetic": False}
    else:
        n = samples or synthetic_count(decl, dims, scale, tie)
        calib = inp.synthetic_inputs(decl, n, seed, dims, scale, tie, fixed)
        desc = {"source": "synthetic", "synthetic": True, "seed": seed, **({"size_scale": scale} if scale != 1 else {}),
                **({"tied_to_batch": True} if tie else {})}
    desc["samples"] = inp.num_samples(calib, decl)
    desc["inputs"] = {d.name: {"dtype": str(calib[d.name].dtype), "shape": list(calib[d.name].shape),
                               **({"table_rows": d.table_rows} if d.table_rows else {})} for d in decl}
    return decl, calib, desc


SYNTHETIC_BYTES = 64 << 20  # default synthetic sets stay about this small (at least 2 samples)


def synthetic_count(decl, dims=None, scale: float = 1.0, tie: bool = False) -> int:
    """16 samples, fewer where one sample's inputs are large (a 40 MB input gets 2)."""
    shapes = inp.sample_shapes(decl, dims, scale, tie)
    one = sum(int(np.prod(shapes[d.name][0])) * np.dtype(d.dtype or np.float32).itemsize for d in decl)
    return int(min(inp.DEFAULT_SAMPLES, max(2, SYNTHETIC_BYTES // max(one, 1))))


def probe(graph, weights: dict, dims: dict | None = None, seed: int = 0, fixed: dict | None = None):
    """(scale, tie, error on the defaults) of the first synthetic sizes the model runs on, one sample
    each in one ONNX Runtime session (dcformat.inputs.probe_sizes); scale None when none runs."""
    from .budget import Runner

    decl = inp.declared_inputs(graph)
    r = Runner(graph, weights)
    return inp.probe_sizes(lambda feeds: r.session.run(r.output_names, feeds), decl, dims, seed, fixed)


def run_model(graph, weights: dict, calib: dict, decl) -> dict:
    """Outputs (per output, per sample) of the graph with these weights, in ONNX Runtime."""
    from .budget import Runner

    r = Runner(graph, weights)
    if not decl:
        outs = r.session.run(None, {})
        return {n: [np.asarray(y)] for n, y in zip(r.output_names, outs)}
    return inp.run_set(r.session, calib, decl, output_names=r.output_names)


def tensor_snr(originals: dict, recon: dict) -> dict:
    """Per tensor reconstruction SNR (dB) of the compressed float tensors (weights-only inputs)."""
    out = {}
    for name, r in recon.items():
        w = originals.get(name)
        if r is None or w is None or r is w or w.dtype.kind != "f":
            continue
        out[name] = fidelity.snr_db(w, r)
    return out
