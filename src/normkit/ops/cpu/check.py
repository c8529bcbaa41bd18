"""The two small loops behind ``normkit._native``'s CPU check, compiled.

The check decides whether torch's float32 kernel output can be kept (see
:mod:`normkit._native`). Written as torch ops it is three or four operator calls and a
scalar read on a tensor of C or N values, about 15 us a layer call on the 2-core machine,
more than normkit's path saved over torch's own module on small layers. Here it is one
compiled loop, called with the tensors' data addresses: converting each tensor with
``Tensor.numpy()`` alone would cost about 2 us.

The caller guarantees what the addresses point to: ``n`` contiguous float32 values per
tensor, alive for the call (see ``normkit._native._centred``). Both loops turn NaN into the
value that fails the caller's comparison, as ``max``/``min`` of the torch version
propagate NaN.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["worst_product", "least_margin"]


@intrinsic
def _void_ptr(typingctx, address):
    """An integer address as the ``void*`` that ``numba.carray`` takes."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(nogil=True, cache=True)
def worst_product(pa, pb, n):
    """``max_i |a_i * b_i|`` of the float32 arrays at addresses ``pa`` and ``pb`` (``n``
    values each), the product rounded to float32 as torch's ``a.mul(b)``; inf when any
    product is NaN."""
    a = carray(_void_ptr(pa), n, np.float32)
    b = carray(_void_ptr(pb), n, np.float32)
    worst = 0.0
    for i in range(n):
        v = abs(a[i] * b[i])
        if not v <= worst:  # larger, or NaN
            if v != v:
                return np.inf
            worst = v
    return worst


@njit(nogil=True, cache=True)
def least_margin(pvar, pmean, n, inv_k2):
    """``min_i (var_i + inv_k2 * mean_i**2)`` in float64 over the float32 arrays at
    addresses ``pvar`` and ``pmean`` (``n`` values each); -inf when any term is NaN."""
    var = carray(_void_ptr(pvar), n, np.float32)
    mean = carray(_void_ptr(pmean), n, np.float32)
    least = np.inf
    for i in range(n):
        m = np.float64(mean[i])
        v = np.float64(var[i]) + inv_k2 * m * m
        if not v >= least:  # smaller, or NaN
            if v != v:
                return -np.inf
            least = v
    return least
