r"""``v ** -beta`` for float32 LRN scales, in a form LLVM vectorises.

numba lowers ``v ** b`` to one scalar ``pow`` call per element: the general-beta LRN
(every beta but 1/2, 3/4 and 1) spent most of its time there, about 4x the
special-beta kernels. :func:`neg_pow` computes the same power as
``exp(-beta * ln v)`` in float64 from multiplies, adds, one division and bit moves,
all of which the loop vectoriser turns into AVX2 code:

- ``ln v``: ``v = 2^e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read from the bits of
  ``v``; ``ln m = 2 atanh(t)``, ``t = (m - 1) / (m + 1)``, ``|t| <= 0.1716``, by its
  odd series to ``t^13 / 13`` (the next term is below ``1.3e-12`` relative);
  ``e ln 2`` with ln 2 split in a high part whose product with any exponent here is
  exact and a low part.
- ``exp(y)``: ``y = n ln 2 + r`` with ``n`` the nearest integer (the 1.5 * 2^52 rounding
  trick) and ``|r| <= ln 2 / 2``; ``e^r`` by Taylor to ``r^9 / 9!`` (the next term is
  below ``7e-12``) in Estrin's form; ``2^n`` written as exponent bits.

The float64 result is within ~1e-11 (plus a few 1e-16 times ``|y|``) of the true power,
relative, far inside the float32 rounding that follows: the float32 result is the
correctly rounded power except within 1e-11 of a rounding boundary, where it may be 1 ulp
off (the float32 ``powf`` this replaces is within 1 ulp too).
``y`` is clamped to ``[-200, 200]``: beyond ``|y| > 104`` the float32 result is already
0 or inf, which the clamped value still gives. Only positive finite ``v`` take this
path; zero, negative, infinite and NaN scales (possible with hostile inputs or
parameters) are sent to ``pow`` afterwards, so IEEE ``pow``'s answers (inf for 0, 0 for
inf, NaN for NaN and for a negative base) stay exact.

Compiled with fastmath ``contract`` only (fused multiply-adds): ``reassoc`` would fold
``(x + M) - M`` to ``x`` and break the rounding trick. The row loops below live here,
not in the LRN kernels, so that they are compiled with these flags (numba inlines at its
own IR level, where the caller's flags would apply).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["neg_pow", "neg_pow_row", "scale_row", "scale_pow_t_row"]


@intrinsic
def _bits(typingctx, x):
    """The int64 bit pattern of a float64."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float64 whose bit pattern is the int64 ``i``."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


_LN2_HI = 6.93147180369123816490e-01  # 0x3FE62E42FEE00000: n * _LN2_HI is exact, |n| < 2^20
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_INV_LN2 = 1.44269504088896338700e00
_SQRT2 = 1.4142135623730951
_ROUND = 6755399441055744.0  # 1.5 * 2^52: y + _ROUND rounds y to an integer
_ROUND_BITS = 0x4338000000000000  # bits of _ROUND; bits(y + _ROUND) - this = that integer
_TWO52 = 4503599627370496.0  # 2^52
_TWO52_BITS = 0x4330000000000000
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_Y_MAX = 200.0
_MIN_NORMAL = 2.2250738585072014e-308


# contract (fused multiply-add) shortens the polynomials' dependency chains; no reassoc
_FM = {"contract"}


@njit(nogil=True, cache=True, error_model="numpy", fastmath=_FM, inline="always")
def neg_pow(v, neg_beta):
    """``v ** neg_beta`` for a normal positive finite float64 ``v`` (any float64
    exponent); the caller keeps other ``v`` away (see the module docstring)."""
    b = _bits(v)
    # exponent e as a float: its biased 11 bits under 2^52's bits, minus 2^52 and the bias
    e = _from_bits(_TWO52_BITS | ((b >> 52) & 0x7FF)) - _TWO52 - 1023.0
    m = _from_bits((b & _MANTISSA) | _ONE_BITS)  # [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    s = 1.0 / 13.0
    s = s * t2 + 1.0 / 11.0
    s = s * t2 + 1.0 / 9.0
    s = s * t2 + 1.0 / 7.0
    s = s * t2 + 1.0 / 5.0
    s = s * t2 + 1.0 / 3.0
    ln_m = 2.0 * t + 2.0 * t * t2 * s  # 2 atanh(t), to t^13 / 13
    y = neg_beta * (e * _LN2_HI + (ln_m + e * _LN2_LO))
    y = min(max(y, -_Y_MAX), _Y_MAX)
    rounded = y * _INV_LN2 + _ROUND
    n = rounded - _ROUND
    r = (y - n * _LN2_HI) - n * _LN2_LO
    # e^r to r^9 / 9! in Estrin's form (shorter chains than Horner's)
    r2 = r * r
    r4 = r2 * r2
    b0 = (1.0 + r) + r2 * (0.5 + r * (1.0 / 6.0))
    b1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + r2 * (1.0 / 720.0 + r * (1.0 / 5040.0))
    b2 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
    p = b0 + r4 * (b1 + r4 * b2)
    scale = _from_bits((_bits(rounded) - _ROUND_BITS + 1023) << 52)  # 2^n, |n| <= 289
    return p * scale


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _ok(v):
    # a normal positive finite float64 (every positive float32 is one; False for NaN); no
    # short-circuit, so the loop stays branch-free
    return (v >= _MIN_NORMAL) & (v < np.inf)


# Row loops for the LRN kernels (float32 rows, float64 exponent). Each runs the vectorised
# power over the row, counting the values it may not take, and sends those to pow after.


@njit(nogil=True, cache=True, error_model="numpy", fastmath=_FM)
def neg_pow_row(s, p, w, neg_beta):
    """``p[:w] = s[:w] ** neg_beta``."""
    bad = 0
    for i in range(w):
        v = np.float64(s[i])
        ok = _ok(v)
        p[i] = neg_pow(v if ok else 1.0, neg_beta)
        bad += not ok
    if bad:
        for i in range(w):
            v = np.float64(s[i])
            if not _ok(v):
                p[i] = v**neg_beta


@njit(nogil=True, cache=True, error_model="numpy", fastmath=_FM)
def scale_row(s, xr, yr, w, alpha, k, neg_beta):
    """``yr[:w] = xr * (k + alpha s) ** neg_beta`` (``k + alpha s`` in the rows' dtype)."""
    bad = 0
    for i in range(w):
        v = np.float64(k + alpha * s[i])
        ok = _ok(v)
        yr[i] = xr[i] * np.float32(neg_pow(v if ok else 1.0, neg_beta))
        bad += not ok
    if bad:
        for i in range(w):
            v = np.float64(k + alpha * s[i])
            if not _ok(v):
                yr[i] = xr[i] * np.float32(v**neg_beta)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=_FM)
def scale_pow_t_row(s, xr, dyr, pr, tr, w, alpha, k, neg_beta):
    """``pr = v ** neg_beta`` and ``tr = dy x pr / v`` with ``v = k + alpha s``."""
    bad = 0
    for i in range(w):
        v = k + alpha * s[i]
        v64 = np.float64(v)
        ok = _ok(v64)
        q = np.float32(neg_pow(v64 if ok else 1.0, neg_beta))
        pr[i] = q
        tr[i] = dyr[i] * xr[i] * q / v
        bad += not ok
    if bad:
        for i in range(w):
            v = k + alpha * s[i]
            if not _ok(np.float64(v)):
                q = np.float32(np.float64(v) ** neg_beta)
                pr[i] = q
                tr[i] = dyr[i] * xr[i] * q / v
