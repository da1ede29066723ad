"""What each weight does, decided the same way for every input format.

A tensor's role comes from what consumes it in the graph, followed through layout
operators (Transpose, Reshape, Slice, Concat, Cast ...), in the main graph and in subgraphs:

===========  ===================================================================  ==================
role         consumers                                                            compressed by default
===========  ===================================================================  ==================
conv         Conv / ConvTranspose filters                                         yes
fc           Gemm / MatMul matrices, LSTM / GRU / RNN input and recurrence weights yes
embedding    Gather tables (rows are looked up)                                   yes
norm         BatchNormalization / LayerNormalization / InstanceNormalization /    no (stored exactly)
             GroupNormalization parameters
bias         Conv / Gemm / LSTM / GRU / RNN biases, 1-D vectors added to outputs  no
analytic     a conv or fc weight that is a fixed transform (an STFT / DFT basis:  no
             every filter a windowed sinusoid), not a learned filter
other        anything else (shapes, masks, scales, buffers)                       no
===========  ===================================================================  ==================

Without a graph (safetensors, state_dicts) the same roles come from names and shapes, as
PyTorch lays them out: ``*embed*`` / ``wte`` / ``wpe`` tables are embeddings, ``*norm*`` /
``ln*`` / ``bn*`` vectors norms, 1-D ``*bias`` biases, other 2-D tensors fc, 3-D and up conv.
``--role PATTERN=ROLE`` overrides either.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

ROLES = ("conv", "fc", "embedding", "norm", "bias", "analytic", "other")
COMPRESSIBLE = ("conv", "fc", "embedding")
PRIORITY = {r: i for i, r in enumerate(("conv", "fc", "embedding", "analytic", "norm", "bias", "other"))}

# operators that move or re-lay-out a weight without computing with it: its role is its consumers'
PASS_THROUGH = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Identity", "Slice", "Concat",
                "Split", "Expand", "DequantizeLinear"}
NORMS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
         "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"}
RECURRENT = {"LSTM", "GRU", "RNN"}

ANALYTIC_MIN_TAPS = 16  # a filter shorter than this cannot be told from a learned one
ANALYTIC_SHARE = 0.9  # of the filters' energy in 3 adjacent frequency bins, for 90% of the filters


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return a
    return default


def _use(node, k: int, flipped: bool) -> tuple[str, int] | None:
    """(role, output axis) of the weight that is input ``k`` of ``node`` (``flipped``: it passed
    through a 2-D transpose on the way), or None when the node says nothing."""
    op = node.op_type
    if op == "Conv":
        return ("conv", 0) if k == 1 else ("bias", 0) if k == 2 else None
    if op == "ConvTranspose":
        return ("conv", 1) if k == 1 else ("bias", 0) if k == 2 else None
    if op == "Gemm":
        if k == 2:
            return "bias", 0
        tb = _attr(node, "transB")
        ta = _attr(node, "transA")
        if k == 1:
            axis = 0 if tb is not None and tb.i else 1
        else:
            axis = 1 if ta is not None and ta.i else 0
        return "fc", (1 - axis if flipped else axis)
    if op == "MatMul":
        axis = 1 if k == 1 else 0  # x @ W: W's columns are the outputs; W @ x: its rows
        return "fc", (1 - axis if flipped else axis)
    if op in RECURRENT:  # W / R: [directions, gates x hidden, features]; rows reached through Slice/Concat/
        # Unsqueeze (exporters reorder the gates) stay the second-to-last axis of the record (converters.recurrent)
        return ("fc", -2) if k in (1, 2) else ("bias", -1) if k == 3 else ("other", 0)
    if op == "Gather":
        axis = _attr(node, "axis")
        return ("embedding", axis.i if axis is not None else 0) if k == 0 else ("other", 0)
    if op in NORMS:
        return ("norm", 0) if k >= 1 else None
    if op in ("Add", "Sub"):
        return "bias", 0
    return None


def graph_roles(model, weights: dict | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """Role and output axis of every tensor record a graph (with references) refers to.

    Values are resolved scope by scope (a subgraph sees its own initializers and Constant
    nodes first, then the enclosing graph's), so two branches that reuse a name keep apart.
    With ``weights`` (record name -> array), conv and fc weights that are fixed transforms
    become ``analytic``.
    """
    from dcformat.graph import reference

    votes: dict[str, list[tuple[str, int]]] = {}
    ranks: dict[str, int] = {}  # record -> its number of axes (a negative output axis counts from the end)

    def walk(g, outer: dict):
        scope = dict(outer)  # value name -> [(record, flipped)] of the weights it carries
        for i in g.input:
            scope.pop(i.name, None)
        for t in g.initializer:
            r = reference(t)
            scope[t.name] = [(r, False)] if r else []
            if r:
                votes.setdefault(r, [])
                ranks[r] = len(t.dims)
        for node in g.node:
            if node.op_type == "Constant":
                v = _attr(node, "value")
                r = reference(v.t) if v is not None else None
                for o in node.output:
                    scope[o] = [(r, False)] if r else []
                if r:
                    votes.setdefault(r, [])
                    ranks[r] = len(v.t.dims)
                continue
            ins = [scope.get(i, []) if i else [] for i in node.input]
            carried = []
            if node.op_type in PASS_THROUGH:  # the weight's role is where it goes next
                for src in (ins if node.op_type == "Concat" else ins[:1]):
                    for r, flip in src:
                        if node.op_type == "Transpose":
                            perm = _attr(node, "perm")
                            flip = (not flip) if perm is None or list(perm.ints) == [1, 0] else flip
                        carried.append((r, flip))
            else:
                for k, src in enumerate(ins):
                    for r, flip in src:
                        votes[r].append(_use(node, k, flip) or ("other", 0))
            for o in node.output:
                scope[o] = carried
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub, scope)

    walk(model.graph, {})
    roles, axes = {}, {}
    for r, vs in votes.items():
        if not vs:
            roles[r], axes[r] = "other", 0
            continue
        role, axis = min(vs, key=lambda v: PRIORITY[v[0]])
        roles[r], axes[r] = role, (axis % ranks[r] if axis < 0 and ranks.get(r) else max(axis, 0))
    if weights is not None:
        mark_analytic(roles, weights)
    return roles, axes


def mark_analytic(roles: dict[str, str], weights: dict) -> None:
    """Turn the conv/fc roles of fixed transforms (:func:`is_analytic`) into ``analytic``, in place."""
    for r, role in roles.items():
        if role in ("conv", "fc") and weights.get(r) is not None and is_analytic(weights[r]):
            roles[r] = "analytic"


_EMBED = re.compile(r"(embed|(^|[._])(wte|wpe|tok_embeddings|word_embeddings|shared)([._]|$))", re.I)
_NORM = re.compile(r"(norm|(^|[._])(ln|bn|ln_\w+|layernorm|batchnorm)\d*([._]|$))", re.I)


def shape_roles(weights: dict[str, np.ndarray]) -> tuple[dict[str, str], dict[str, int]]:
    """Roles of a weights-only file, from names and PyTorch's layouts (see the module docstring)."""
    roles, axes = {}, {}
    for name, a in weights.items():
        is_float = a.dtype.kind == "f" or a.dtype.name == "bfloat16"
        if not is_float:
            roles[name], axes[name] = "other", 0
        elif a.ndim >= 2 and _EMBED.search(name) and a.ndim == 2:
            roles[name], axes[name] = "embedding", 0
        elif a.ndim == 1 and _NORM.search(name):
            roles[name], axes[name] = "norm", 0
        elif a.ndim == 1 and name.endswith("bias"):
            roles[name], axes[name] = "bias", 0
        elif a.ndim == 2:
            roles[name], axes[name] = "fc", 0
        elif a.ndim >= 3:
            roles[name], axes[name] = "conv", 0
        else:
            roles[name], axes[name] = "other", 0
    return roles, axes


def is_analytic(w: np.ndarray) -> bool:
    """True when ``w``'s filters (its last axis) are windowed sinusoids: each holds at least
    ANALYTIC_SHARE of its energy in 3 adjacent DFT bins, for ANALYTIC_SHARE of the non-zero
    filters -- an STFT / DFT basis. Learned filters spread their energy."""
    if w.ndim < 2 or w.shape[-1] < ANALYTIC_MIN_TAPS or not np.isfinite(w).all():
        return False
    f = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
    if f.shape[0] > 4096:  # enough filters to tell
        f = f[np.linspace(0, f.shape[0] - 1, 4096).astype(int)]
    power = np.abs(np.fft.rfft(f, axis=1)) ** 2
    total = power.sum(axis=1)
    live = total > 0
    if live.sum() < 2:
        return False
    c = np.cumsum(np.pad(power[live], ((0, 0), (1, 0))), axis=1)
    best = (c[:, 3:] - c[:, :-3]).max(axis=1) if c.shape[1] > 3 else c[:, -1]
    return bool(np.mean(best / total[live] >= ANALYTIC_SHARE) >= ANALYTIC_SHARE)


def parse_overrides(text: str | None) -> list[tuple[str, str]]:
    """``--role 'PATTERN=ROLE,...'`` as (glob, role) pairs; ValueError naming the bad item."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        pat, sep, role = item.rpartition("=")
        if not sep or not pat.strip():
            raise ValueError(f"{item!r} is not PATTERN=ROLE")
        if role.strip() not in ROLES:
            raise ValueError(f"{item!r}: role {role.strip()!r} is not one of {', '.join(ROLES)}")
        out.append((pat.strip(), role.strip()))
    return out


def apply_overrides(roles: dict[str, str], names, overrides: list[tuple[str, str]]) -> list[str]:
    """Set the role of every name matching a pattern (first pattern wins); returns patterns that
    matched nothing."""
    unmatched = []
    for pat, _ in overrides:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            unmatched.append(pat)
    for n in names:
        for pat, role in overrides:
            if fnmatch.fnmatchcase(n, pat):
                roles[n] = role
                break
    return unmatched


__all__ = ["ROLES", "COMPRESSIBLE", "graph_roles", "shape_roles", "is_analytic", "mark_analytic", "parse_overrides", "apply_overrides"]
