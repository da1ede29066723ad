"""Float rounding: a weight kept as floats with fewer mantissa bits (the budget search's near-lossless rungs).

Between 8-bit sharing and an exact copy the codebook encodings have nothing to offer (a codebook holds at
most MAX_CODEBOOK = 256 entries), so a layer that 8-bit sharing disturbs too much used to be stored exactly:
about 27 bits a float32 weight with float-planes (spec 7.4; the exponent plane Huffman-coded, the mantissa
planes stored). Rounding each weight to ``m`` mantissa bits (round to nearest, ties to even, as IEEE 754
conversions round) leaves the values float32 values, so the file needs no new encoding: float-planes
then Huffman-codes the mantissa planes that rounding made low-entropy (a plane of zeros or of signs costs
about one bit an element). Measured bits a weight (plane entropies, trained float32 weights): exponent
~2.7, plus ``m`` for the kept mantissa bits that fall in the top mantissa plane, plus about 1 for each
lower plane (zeros, the sign): m = 10 about 14, m = 7 about 12, m = 5 about 10. The relative error of
each weight is at most 2^-(m+1) (m = 7: bfloat16's precision, 0.4%), independent of the layer's range,
which per-channel codebooks also have to pay for.
"""

from __future__ import annotations

import numpy as np

MANTISSA_BITS = {"float32": 23, "float64": 52, "float16": 10, "bfloat16": 7}
SCAN_MANTISSA = (10, 7, 5)  # the rungs the budget search offers, finest first
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def mantissa_bits(dtype) -> int | None:
    """Mantissa bits of a float dtype (None for other dtypes)."""
    return MANTISSA_BITS.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype)


def round_mantissa(w: np.ndarray, m: int) -> np.ndarray:
    """``w`` with each finite value rounded to ``m`` mantissa bits, to nearest with ties to even (a new array,
    same dtype). Zeros, signs, infinities and NaNs are kept; a value that would round past the largest
    finite value is truncated instead (it stays finite)."""
    w = np.asarray(w)
    full = mantissa_bits(w.dtype)
    if full is None:
        raise ValueError(f"round_mantissa needs a float array, not {w.dtype}")
    if not 0 <= m <= full:
        raise ValueError(f"mantissa bits must be in [0, {full}] for {w.dtype}, not {m}")
    if m == full:
        return w.copy()
    ut = _UINT[w.dtype.itemsize]
    u = np.ascontiguousarray(w).view(ut)
    shift = ut(full - m)
    one = ut(1)
    low = (one << shift) - one  # the dropped bits
    half = one << (shift - one)
    odd = (u >> shift) & one
    r = (u + (half - one) + odd) & ~low  # magnitudes are monotone in the bit pattern: sign bit untouched
    out = r.view(w.dtype)
    exp_mask = ut(((1 << (8 * w.dtype.itemsize - 1 - full)) - 1) << full)
    special = (u & exp_mask) == exp_mask  # inf, NaN: as they are
    overflow = ~special & ((r & exp_mask) == exp_mask)  # rounded up to inf: truncate instead
    if special.any() or overflow.any():
        r = np.where(special, u, np.where(overflow, u & ~low, r))
        out = r.view(w.dtype)
    return out.reshape(w.shape)


def estimate_bytes(q: np.ndarray) -> float:
    """Bytes of ``q`` as dcformat.encode would store it (float-planes where smaller than raw)."""
    from dcformat.encode import estimate_float_planes_bytes

    return float(min(estimate_float_planes_bytes(q), q.nbytes))
