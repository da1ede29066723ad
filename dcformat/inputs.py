"""Model inputs for dcrun: random ones from the declared shapes, or checked user arrays."""

from __future__ import annotations

import math

import numpy as np

from .errors import DczError

ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


class InputError(DczError):
    """Inputs given to a model do not match what it declares."""


def describe(inputs) -> str:
    return "; ".join(f"{i.name}: {i.type} {list(i.shape)}" for i in inputs)


def concrete_shape(shape, batch: int) -> list[int]:
    """Declared shape with symbolic/unknown dims set: the first to ``batch``, the others to 1."""
    out = []
    for k, d in enumerate(shape):
        out.append(d if isinstance(d, int) and d >= 0 else (batch if k == 0 else 1))
    return out


MAX_RANDOM_INPUT_BYTES = 1 << 30


def random_inputs(session, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        dt = ORT_TYPES.get(i.type)
        if dt is None:
            raise InputError(f"cannot make a random input of type {i.type} for {i.name!r}; give it with --input")
        shape = concrete_shape(i.shape, batch)
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if nbytes > MAX_RANDOM_INPUT_BYTES:  # a shape like [2^62, 2^62]: numpy would raise "array is too big"
            raise InputError(f"input {i.name!r} declares {list(shape)}: {nbytes:,} bytes, more than a random input "
                             f"may take ({MAX_RANDOM_INPUT_BYTES >> 20} MiB); give it with --input NAME=FILE.npy")
        if np.dtype(dt).kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
        elif np.dtype(dt).kind == "b":
            feeds[i.name] = np.asarray(rng.random(shape) < 0.5)  # a 0-d array, not a numpy scalar, for shape []
        else:
            feeds[i.name] = rng.integers(0, 10, shape).astype(dt)
    return feeds


def check_inputs(session, feeds: dict[str, np.ndarray]) -> None:
    """Raise InputError listing what the model expects if names, dtypes or fixed dims differ."""
    declared = {i.name: i for i in session.get_inputs()}
    expect = f"the model expects {describe(declared.values())}"
    unknown = sorted(set(feeds) - set(declared))
    if unknown:
        raise InputError(f"unknown input {', '.join(map(repr, unknown))}: {expect}")
    missing = sorted(set(declared) - set(feeds))
    if missing:
        raise InputError(f"missing input {', '.join(map(repr, missing))}: {expect}")
    for name, arr in feeds.items():
        i = declared[name]
        dt = ORT_TYPES.get(i.type)
        if dt is not None and arr.dtype != np.dtype(dt):
            raise InputError(f"input {name!r} is {arr.dtype}, not {i.type}; {expect}")
        if len(arr.shape) != len(i.shape) or any(
            isinstance(d, int) and d >= 0 and d != s for d, s in zip(i.shape, arr.shape)
        ):
            raise InputError(f"input {name!r} has shape {list(arr.shape)}, not {list(i.shape)}; {expect}")
