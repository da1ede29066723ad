"""Sequential (error-propagation-aware) fitting of a plan's layers: each layer compensates what the
layers before it already changed (GPTQ's "true sequential", SparseGPT).

The local fit of converters/oneshot.py and converters/perchannel.py minimises ``||X W^T - X Q^T||``
against the float model's own inputs ``X`` of the layer. Once the layers before it are compressed,
the layer sees other inputs ``X_hat``, and what matters is how far its outputs are from the float
model's: ``||X W^T - X_hat Q^T||``. With ``H_hat = X_hat^T X_hat`` and ``C = X_hat^T X`` that is

    ||X_hat (W* - Q)^T||^2 + const,   W* = W (C^T + l I) (H_hat + l I)^-1

where ``W*`` is the least-squares map of ``X_hat`` onto the float outputs, damped toward ``W``
(``l`` = converters.oneshot.damping of the layer's rows times H_hat's mean diagonal: the same
damping the compensation uses; with ``X_hat = X``, ``W* = W`` exactly). So the layer is built by
the usual code (codebook, GPTQ/OBS rounding, per-channel scales) from ``W*`` with ``H_hat`` in
place of ``W`` and ``H``: nothing else changes.

:class:`Sequential` applies a plan in topological order: for each planned layer with an H, one run
of the model on the calibration samples with the tensors before it already compressed captures
``X_hat`` (one sample at a time; a convolution's im2col patches subsampled as converters/hessian.py
does, the same positions for ``X_hat`` and ``X``), and a run with the float weights gives ``X``
(kept for the next pass while they fit in FLOAT_CACHE_BYTES). Layers before the first whose
setting changed since the last pass are reused. Tensors without an H (tables, shared weights,
subgraphs) are built as before. numpy and ONNX Runtime only.
"""

from __future__ import annotations

import copy

import numpy as np

from . import hessian

FLOAT_CACHE_BYTES = 256 << 20  # float-model inputs of layers kept between passes
CHUNK = 8  # calibration samples per run where the model takes batches


def order(graph, names) -> list[str]:
    """``names`` (weights of converters.hessian layers) in the order of the nodes that use them
    (ONNX nodes are topologically sorted): a layer's inputs depend only on layers before it."""
    record = hessian.records_of(graph)
    wanted, pos = set(names), {}
    for k, node in enumerate(graph.graph.node):
        if len(node.input) > 1:
            r = record.get(node.input[1])
            if r in wanted and r not in pos:
                pos[r] = k
    return sorted(wanted, key=lambda n: (pos.get(n, len(graph.graph.node)), n))


def accumulate_pair(layer: hessian.Layer, x_hat: np.ndarray, x: np.ndarray, w_shape, rng: np.random.Generator,
                    acc: dict, max_rows: int = hessian.MAX_ROWS_PER_BATCH) -> None:
    """Add one batch to ``acc["h"]`` (per group ``X_hat^T X_hat``) and ``acc["c"]`` (``X_hat^T X``),
    the same rows (image positions, tokens) of both."""
    seed = int(rng.integers(1 << 62))
    if layer.op == "Conv":
        kernel = tuple(w_shape[2:])
        gh = hessian.patches(np.asarray(x_hat), layer, kernel, np.random.default_rng(seed), max_rows)
        gx = hessian.patches(np.asarray(x), layer, kernel, np.random.default_rng(seed), max_rows)
    else:
        fh = np.asarray(x_hat).reshape(-1, np.shape(x_hat)[-1])
        fx = np.asarray(x).reshape(-1, np.shape(x)[-1])
        if fh.shape[0] > max_rows:
            take = np.sort(np.random.default_rng(seed).choice(fh.shape[0], max_rows, replace=False))
            fh, fx = fh[take], fx[take]
        gh, gx = np.asarray(fh, np.float64)[None], np.asarray(fx, np.float64)[None]
    ht = gh.transpose(0, 2, 1)
    h, c = np.matmul(ht, gh), np.matmul(ht, gx)
    if "h" not in acc:
        acc["h"], acc["c"], acc["rows"] = np.zeros_like(h), np.zeros_like(c), 0
    acc["h"] += h
    acc["c"] += c
    acc["rows"] += gh.shape[1]


def target(w: np.ndarray, layer: hessian.Layer, h_hat: np.ndarray, cross: np.ndarray, rows: int) -> np.ndarray:
    """``W* = W (C^T + l I) (H_hat + l I)^-1`` per group (module docstring), in ``w``'s shape and dtype."""
    from .oneshot import damping

    parts = np.stack(hessian.to_rows(w, layer))  # groups x rows x cols
    cols = parts.shape[-1]
    diag = np.einsum("gii->gi", h_hat)
    mean = np.where(diag.mean(axis=1) > 0, diag.mean(axis=1), 1.0)
    lam = damping(cols, rows) * mean  # per group
    eye = np.eye(cols)
    a = h_hat + lam[:, None, None] * eye  # symmetric positive definite
    rhs = np.matmul(parts, cross.transpose(0, 2, 1)) + lam[:, None, None] * parts  # W (C^T + l I)
    star = np.linalg.solve(a, rhs.transpose(0, 2, 1)).transpose(0, 2, 1)  # (a^-1 rhs^T)^T = rhs a^-1
    star = np.where(np.isfinite(star), star, parts)
    out = hessian.from_rows(list(star), w, layer).astype(w.dtype)
    zero = np.asarray(w) == 0
    if zero.any():  # a weight pruned elsewhere stays pruned (its zeros are the mask the builders keep)
        out[zero] = 0
    return out


class Sequential:
    """A plan applied layer by layer in topological order (module docstring).

    ``layers``: name -> converters.hessian.Layer (with H) of the weights fitted sequentially;
    ``variable``: every weight a plan may compress (fed to the session at each run);
    ``calib``: the calibration samples the H were collected on."""

    def __init__(self, graph, weights: dict, calib: dict, decl, layers: dict, variable, seed: int = 0,
                 max_rows: int = hessian.MAX_ROWS_PER_BATCH):
        from .budget import Runner

        self.weights, self.calib, self.decl, self.seed, self.max_rows = weights, calib, decl, seed, max_rows
        self.layers = dict(layers)
        self.order = order(graph, list(self.layers))
        self.variable = sorted(set(variable) | set(self.layers))
        acts = sorted({lay.activation for lay in self.layers.values()})
        self.runner = Runner(graph, weights, self.variable, extra_outputs=acts)
        self._float: dict = {}  # activation -> per-sample float inputs
        self._float_bytes = 0
        self._last: list = []  # per layer in order: (key, others key, result) of the last pass
        self.runs = 0  # model runs on the calibration set made
        self.refits = 0  # layers fitted

    def _capture(self, act: str, current: dict) -> list:
        """Per calibration sample, the value ``act`` with the tensors in ``current`` compressed (the
        samples a few at a time where the model takes batches, as dcformat.inputs.run_set runs them)."""
        from dcformat import inputs as inp

        extra = {self.runner.proto_names[v]: current.get(v, self.weights[v]) for v in self.variable}
        self.runs += 1
        return inp.run_set(self.runner.session, self.calib, self.decl, chunk=CHUNK, feeds_extra=extra,
                           output_names=[act])[act]

    def _float_inputs(self, act: str) -> list:
        got = self._float.get(act)
        if got is not None:
            return got
        got = self._capture(act, {})
        size = sum(a.nbytes for a in got)
        if self._float_bytes + size <= FLOAT_CACHE_BYTES:
            self._float[act] = got
            self._float_bytes += size
        return got

    def fit(self, name: str, current: dict, index: int) -> tuple[np.ndarray, hessian.Layer]:
        """(W*, Layer with H_hat) of one layer, the tensors in ``current`` already compressed."""
        lay, w = self.layers[name], self.weights[name]
        floats = self._float_inputs(lay.activation)
        rng = np.random.default_rng([self.seed, index])
        acc: dict = {}
        for x_hat, x in zip(self._capture(lay.activation, current), floats):
            accumulate_pair(lay, x_hat, x, w.shape, rng, acc, self.max_rows)
        self.refits += 1
        hat = copy.copy(lay)
        hat.h, hat.rows_seen = list(acc["h"]), int(acc["rows"])
        return target(w, lay, acc["h"], acc["c"], acc["rows"]), hat

    def apply(self, settings: dict, build, others: dict, others_key=None) -> dict:
        """name -> (decoded array, W*, Layer with H_hat) for the layers whose setting is not None.

        ``settings``: name -> a hashable setting or None (raw) for the layers of this object;
        ``build(name, w_star, layer_hat, setting)``: the decoded array of that setting;
        ``others``: the other compressed tensors (name -> decoded), fed in every run, with
        ``others_key`` saying when they changed (then nothing of the last pass is reused)."""
        current = dict(others)
        out, new_last, reuse = {}, [], True
        compressed_before = bool(others)
        for k, name in enumerate(self.order):
            key = settings.get(name)
            prev = self._last[k] if k < len(self._last) else None
            if reuse and prev is not None and prev[0] == key and prev[1] == others_key:
                res = prev[2]
            else:
                reuse = False
                if key is None:
                    res = None
                elif not compressed_before:  # nothing before it is compressed: its inputs are the float ones
                    res = (build(name, self.weights[name], self.layers[name], key), self.weights[name],
                           self.layers[name])
                else:
                    w_star, hat = self.fit(name, current, k)
                    res = (build(name, w_star, hat, key), w_star, hat)
            new_last.append((key, others_key, res))
            if res is not None:
                out[name] = res
                current[name] = res[0]
                compressed_before = True
        self._last = new_last
        return out


def install(search, weights: dict, layers: dict) -> None:
    """Hand the final plan's sequentially fitted layers (``search.refits``, converters.budget.search)
    to compress_tensor: ``weights[name] = W*`` and ``layers[name]`` = the Layer with ``H_hat``, from
    which it builds exactly what the search verified (the file's fidelity is measured against the
    original weights, which the caller keeps)."""
    for name, (w_star, hat) in getattr(search, "refits", {}).items():
        if (search.plan or {}).get(name) is not None:
            weights[name] = w_star
            layers[name] = hat


__all__ = ["Sequential", "install", "order", "accumulate_pair", "target", "FLOAT_CACHE_BYTES"]
