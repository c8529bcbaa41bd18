"""The size-aware part of ``backend="auto"``: torch's own kernel where it is faster, made
exact by a check (CPU) or a shift (CUDA).

On a small tensor a normkit kernel call costs more in fixed overhead (argument checks,
the autograd.Function, the op layer, numpy views of every tensor) than the kernel itself,
while torch's native layer norm, group norm and batch norm are one C++ call each. But
torch's kernels do not meet normkit's accuracy contract on data with a large mean: they
subtract a float32 mean rounded to the data's magnitude, so at mean 1e4 and std 1 the
output is off by about 4e-4 (``tests/test_native.py`` measures it), 200x normkit's float32
bound of 2e-6.

The cure is the shift invariance of these layers: layer norm, group norm, instance norm
and batch norm give the same output for ``x - s`` as for ``x`` when ``s`` is constant over
each set of values that share statistics. How it is applied depends on the device:

* **CPU: checked.** torch's kernel runs on the input as it is and returns the statistics
  it used; its error beyond normkit's grows with ``|mean| * rstd`` of each set, and at
  :data:`CENTRED_MAX` (4 standard deviations) it is still below half the float32 floor
  (``benchmarks/native_centred.py``, ``tests/test_native.py``). A call with every set
  within that limit keeps torch's result; any other is recomputed on the input minus
  torch's own (detached) mean, after which ``|mean| * rstd`` is about ``2**-24`` of what it
  was. The check is one compiled loop over the statistics (:mod:`normkit.ops.cpu.check`),
  cheaper than an elementwise pass over the input; in training batch norm the running
  statistics come from the first call, whose float64 accumulation makes them right even
  off centre. Under
  ``torch.jit.trace`` (which would freeze the check's verdict) the CPU takes the shift below.
* **CUDA: shifted.** The input minus one of its own values per set (``x - s``, computed
  exactly or to half an ulp of the *spread*), so the remaining mean is of the spread's
  size and torch's float32 kernel loses nothing that matters (about 1e-7 at mean 1e4); a
  check would stall the stream on a host read. The shift is detached: the layer's true
  derivative through ``s`` is zero. Batch norm in training updates ``running_mean`` in
  place with the mean of ``x - s``; moving it by ``s * m / (1 - m)`` beforehand makes
  torch's update land on the mean of ``x`` (see :func:`batch_norm_train`; momentum 1 takes
  the kernel path). In evaluation (either device) the shift is the running mean itself and
  torch normalizes with mean 0.

RMS norm has no mean to lose, so torch's ``rms_norm`` is used as it is. The fused residual
add + norm (:func:`add_rms_norm`, :func:`add_layer_norm`; float32 only) is torch's add
followed by the norm above, and the modulated layer norm (:func:`modulated_layer_norm`)
the layer norm above followed by one ``addcmul``.

The torch functions are called below ``torch.nn.functional``'s wrappers
(``torch.native_layer_norm`` and so on; on CUDA batch norm uses cuDNN when torch would),
whose argument checks normkit has already made. The modules' ``_fast_forward`` methods
call this path directly for the common case (their own parameters, a plain float32 CPU
input), skipping the functional layer's per-call checks.

The switch is taken only where nothing is lost by it: ``backend="auto"`` (no
``NORMKIT_BACKEND`` override), a plain CPU or CUDA tensor of float32 with parameters of
the same dtype and device (float64 and half precision keep normkit's kernels), nothing
tracing the call (no ``torch.compile``, no export, no dispatch mode), and fewer elements
than the op's threshold in :data:`THRESHOLDS` (CPU) or :data:`CUDA_THRESHOLDS`. The
thresholds are the measured crossover sizes of ``benchmarks/crossover.py`` (results in
``benchmarks/results/``). When the switch is taken ``dispatch.last_backend[op]`` is
``"native"`` for every op of the layer's family; the backward then runs in torch's autograd.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _export_path as _xp
from . import dispatch
from .ops import schema

__all__ = ["THRESHOLDS", "CUDA_THRESHOLDS", "NATIVE", "chooses"]
__all__ += ["layer_norm", "rms_norm", "group_norm"]
__all__ += ["batch_norm_train", "batch_norm_eval", "tracing", "takes_batch_norm", "dense"]
__all__ += ["module_takes", "takes_fused", "add_rms_norm", "add_layer_norm"]
__all__ += ["modulated_layer_norm"]
__all__ += ["CENTRED_MAX"]

NATIVE = "native"  # the name dispatch.last_backend records for this path

# Elements (input.numel()) below which torch's kernel (checked on the CPU) runs instead of
# normkit's fused kernel: one threshold for calls that build no autograd graph (inference,
# no_grad) and one for calls that do (training). Measured on the 2-core CPU machine, 2
# threads, by benchmarks/crossover.py (the whole call through normkit.functional, kernel
# path versus native path, interleaved), twice after the checked path replaced the shift
# (benchmarks/results/crossover-20261128T012021Z.csv, 128 Ki to 16 Mi, and
# -20261128T012241Z.csv, 1 Mi to 16 Mi). Below these sizes the native path won in both
# runs; from them on normkit's kernels won (at 8 Mi elements and more, 32 MiB of float32,
# every fresh torch output is a fresh mmap that faults page by page, where normkit's
# outputs are advised to huge pages): layer and group norm from 8 Mi both ways, batch norm
# forward from 1 Mi and forward+backward from 4 Mi, RMS norm (no check; unchanged from the
# earlier crossover-20261127T185005Z.csv) forward from 2 Mi and forward+backward from 512 Ki.
# An off-centre call (see the check below) also saves the recentred input for its
# backward: one more input-sized tensor, at most 32 MiB below these thresholds.
THRESHOLDS = {
    # family: (forward only, forward+backward)
    "layer_norm": (1 << 23, 1 << 23),
    "rms_norm": (1 << 21, 1 << 19),
    "group_norm": (1 << 23, 1 << 23),
    "batch_norm": (1 << 20, 1 << 22),
    # instance norm (torch's group norm kernel with one group per channel) on its own.
    # Forward: torch's kernel won at every size to 8 Mi in crossover-20261128T021049Z.csv
    # and to 2 Mi (tied at 4 Mi) in -012637Z.csv. Forward+backward: the two paths tied at
    # 2-4 Mi in -012637Z.csv, torch's won to 4 Mi in -021049Z.csv; the kernel keeps 2 Mi
    # and up (its huge-page outputs fault less), and wins from 8 Mi in both runs
    "instance_norm": (1 << 23, 1 << 21),
    # the fused residual add + norm (normkit.functional.add_rms_norm / add_layer_norm) as
    # torch's add followed by its norm (the layer norm checked): one more pass over h than
    # the fused kernel, a fraction of its fixed cost (autograd.Function, op layer, launch).
    # benchmarks/crossover.py --families add_rms_norm,add_layer_norm, rows of 768, twice
    # (crossover-20261128T050400Z.csv, 4 Ki to 8 Mi, and -050421Z.csv, 128 Ki to 8 Mi):
    # add + RMS norm: the kernel won forward from 2 Mi in one run and 4 Mi in the other,
    # forward+backward from 256 Ki in both (torch's RMS norm backward is slow on the CPU);
    # add + layer norm: forward+backward, the kernel won at 4 Mi in both runs (above that
    # they disagree; below it the native path won but once at 2 Mi); forward, the native
    # path won to 4 Mi and tied at 8 Mi in both, and at (8192, 768) = 6 Mi the kernel won
    # in `normkit bench --layers add_rms_norm,add_layer_norm --repeats 15`
    # (cpu-20261128T050846Z.csv, 5.8 vs 6.6 ms): 4 Mi both ways
    "add_rms_norm": (1 << 21, 1 << 18),
    "add_layer_norm": (1 << 22, 1 << 22),
    # modulated layer norm (DiT's adaLN) as torch's layer norm then one addcmul: x of
    # (N, 64, 256), crossover-20261128T053301Z.csv (16 Ki to 8 Mi) and -053313Z.csv (128 Ki
    # to 2 Mi): the kernel won forward+backward from 512 Ki in both, forward from 1 Mi in
    # one (a tie at 512 Ki) and from 512 Ki in the other
    "modulated_layer_norm": (1 << 19, 1 << 19),
}

# On a CUDA device the Triton kernels' fixed cost per call (the same Python layers plus
# two to seven kernel launches) is paid on the host while the GPU idles: in whole models
# of small layers it made normkit 3-7x slower than torch
# (benchmarks/results/cuda-20261127T204533Z.csv, H100, before this path existed).
# benchmarks/crossover.py --device cuda on an H100 (crossover-20261127T205313Z.csv, each
# call synchronized, 16 Ki to 16 Mi elements): the native path wins forward+backward at
# every size for layer, RMS and group norm and up to 8 Mi for batch norm, and forward
# everywhere but group norm at 16 Mi. After the tiled column sum (crossover-
# 20261127T205916Z.csv, layer and RMS norm to 32 Mi) the native path still won every
# layer/RMS norm case but layer norm forward at 32 Mi. Thresholds: 32 Mi elements for
# layer and RMS norm, 16 Mi (64 MiB of float32) for group and batch norm; above them the
# Triton kernels run (faster than torch's own there:
# benchmarks/results/gpu-h100-20261127/). Instance norm on its own, on an H200
# (benchmarks/results/gpu-h200-20261128/crossover-20261128T035232Z.csv, 64 Ki to 16 Mi):
# the native path won forward+backward at every size and forward to 8 Mi, the kernel the
# forward at 16 Mi, which the 16 Mi threshold matches. The saved shifted copy costs the
# memory noted above; on a GPU the time saved was judged worth it.
_CUDA_CAP = 1 << 24
CUDA_THRESHOLDS = {
    "layer_norm": (2 * _CUDA_CAP, 2 * _CUDA_CAP),
    "rms_norm": (2 * _CUDA_CAP, 2 * _CUDA_CAP),
    "group_norm": (_CUDA_CAP, _CUDA_CAP),
    "instance_norm": (_CUDA_CAP, _CUDA_CAP),
    "batch_norm": (_CUDA_CAP, _CUDA_CAP),
    # the fused add + norm and the modulated layer norm on CUDA, where the native path is
    # torch's composite: benchmarks/crossover.py --device cuda --families add_rms_norm,
    # add_layer_norm,modulated_layer_norm --min-log2 16 --max-log2 26 --repeats 5 on an
    # H200, one run (benchmarks/results/gpu-h200-20261128-2/crossover-20261128T064146Z.csv,
    # each call synchronized). add + RMS norm: the native path won both ways at every size
    # to 64 Mi (its lead narrowing to 1.1x forward+backward there). add + layer norm: the
    # native path won both ways to 32 Mi, the kernel at 64 Mi. Modulated layer norm: the
    # kernel won forward from 32 Mi (a tie at 16 Mi) and forward+backward at 64 Mi (a tie,
    # 1137 vs 1181 us, at 32 Mi). Sizes between those measured take the kernel
    "add_rms_norm": (1 << 26, 1 << 26),
    "add_layer_norm": (1 << 25, 1 << 25),
    "modulated_layer_norm": (1 << 24, 1 << 25),
}

# float32 only (the dtype test in chooses): float64 has no fixed cost worth saving for
# (rare in training) and a floor (1e-12) that torch's float64 backward misses by a little
# at mean 1e4.
#
# float16/bfloat16 on CUDA: torch's kernel as it is, unshifted. normkit's contract for half
# precision is "within twice torch's own error in that dtype" (docs/design.md), which
# torch's kernel meets by definition; a shift computed in half precision would round
# x - s and could add error. Half precision on the CPU keeps normkit's kernels.
_HALF = (torch.float16, torch.bfloat16)


def chooses(family: str, input: torch.Tensor, backend: str, *params) -> bool:
    """True when ``auto`` runs ``family`` on ``input`` with torch's kernel (see above)."""
    # this runs on every layer call: cheapest and most decisive tests first, and each
    # tensor property read once (a few hundred ns apiece)
    if backend != "auto" or type(input) is not torch.Tensor:
        return False
    dtype = input.dtype
    if input.is_cpu:
        if dtype is not torch.float32:
            return False
        forward_only, with_grad = THRESHOLDS[family]
        device = None  # parameters: is_cpu
    elif input.is_cuda:
        if dtype is not torch.float32 and dtype not in _HALF:
            return False
        forward_only, with_grad = CUDA_THRESHOLDS[family]
        device = input.device
    else:
        return False
    numel = input.numel()
    if numel == 0 or (numel >= with_grad and numel >= forward_only):
        return False
    grad_mode = torch.is_grad_enabled()
    grad = grad_mode and input.requires_grad
    for p in params:
        if p is not None:
            if p.dtype is not dtype or (p.device != device if device is not None else not p.is_cpu):
                return False
            grad = grad or (grad_mode and p.requires_grad)
    if numel >= (with_grad if grad else forward_only):
        return False
    env = dispatch.env_backend()
    if env and env != "auto":
        return False
    return not (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None)


def _cudnn(x: torch.Tensor) -> bool:
    """torch.nn.functional.batch_norm's cuDNN flag: on for CUDA tensors when torch's is."""
    return x.is_cuda and torch.backends.cudnn.enabled


def _first(x: torch.Tensor, one_sample: bool) -> torch.Tensor:
    """The first element of each (sample, channel) plane of (N, C, *) as (N, C, 1, ...), or
    of each channel over the batch as (1, C, 1, ...): one ``as_strided`` view."""
    size = (1 if one_sample else x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    return x.as_strided(size, x.stride(), x.storage_offset())


_FAMILIES = (
    "layer_norm",
    "rms_norm",
    "group_norm",
    "batch_norm",
    "add_rms_norm",
    "add_layer_norm",
    "modulated_layer_norm",
)
_OPS = {f: schema.ops_of(f) for f in _FAMILIES}
_RECORDS = {family: dict.fromkeys(ops, NATIVE) for family, ops in _OPS.items()}


def _record(family: str) -> None:
    """Every op of the family ran as torch's (forward here, backward in torch's autograd)."""
    dispatch.last_backend.update(_RECORDS[family])


# --- the CPU path: torch's kernel, checked -------------------------------------------------
# torch's float32 CPU kernels return the statistics they normalized with (mean, rstd). Their
# error beyond normkit's own grows with |mean| * rstd of each set of values that share
# statistics (the float32 mean is rounded at the mean's magnitude, and y is formed as
# x * scale + shift). benchmarks/native_centred.py (native-centred-20261128T011936Z.csv):
# at |mean| * rstd ~ 4.2 the worst relative error of y, dx, dweight and dbias over layer,
# group and batch norm was 8.8e-7 (group norm's dweight; the rest <= 3.4e-7), under half
# the float32 floor 2e-6; at ~8.3 it reached 1.34e-6 and at ~17, 3.1e-6 (over the floor).
# tests/test_native.py keeps the limit honest. The check reads the statistics on the host
# (free of a stall only because the tensor is on the CPU) in one compiled loop: about 3 us
# where the same test as torch ops (mul, abs, max, item) took about 15 us a layer call,
# enough to make small BatchNorm layers slower than torch's module.
CENTRED_MAX = 4.0
_INV_K2 = -1.0 / CENTRED_MAX**2


def tracing() -> bool:
    """A ``torch.jit.trace`` (or the TorchScript ONNX exporter) is recording: it would
    freeze the check's host read as a constant, so the CPU takes the unconditional shift."""
    return torch._C._get_tracing_state() is not None


def _checked(input: torch.Tensor) -> bool:
    """The CPU's checked path applies: a CPU tensor, no tracer recording, no torch.func
    transform active (either of those takes the shift). A transform wraps every tensor: a
    wrapper has no data address for the compiled check, and vmap refuses a host read; the
    shift is made of tensor ops only."""
    return input.is_cpu and not tracing() and not dispatch.transforming()


def module_takes(family: str, input: torch.Tensor, backend: str, *params) -> bool:
    """The modules' ``_fast_forward`` gate: :func:`chooses`, and no exporter or tracer is
    recording the call (the functional layer checks those before it calls :func:`chooses`)."""
    return chooses(family, input, backend, *params) and not (_xp.exporting() or tracing())


def takes_batch_norm(input: torch.Tensor, training: bool, running_mean, momentum: float) -> bool:
    """Whether the native path can run this batch norm call (after :func:`chooses`): the
    CUDA path moves the running mean ahead of torch's update, which needs momentum < 1."""
    return not training or running_mean is None or momentum < 1.0 or _checked(input)


# The check's loops (normkit.ops.cpu.check), imported on first use: numba is not imported
# by `import normkit`. None when numba is missing; the same tests then run as torch ops.
_LOOPS: Optional[tuple] = None


def _loops() -> tuple:
    global _LOOPS
    if _LOOPS is None:
        try:
            from .ops.cpu import check

            _LOOPS = (check.worst_product, check.least_margin)
        except ImportError:
            _LOOPS = (None, None)
    return _LOOPS


def _loopable(a: torch.Tensor, b: torch.Tensor) -> bool:
    """What the compiled loops read at a data address: two CPU tensors of n contiguous
    float32 values each."""
    return (
        a.dtype is torch.float32
        and b.dtype is torch.float32
        and a.numel() == b.numel()
        and a.is_contiguous()
        and b.is_contiguous()
    )


def _centred(mean: torch.Tensor, rstd: torch.Tensor) -> bool:
    """True when every ``|mean| * rstd`` is at most :data:`CENTRED_MAX` (False for NaN);
    ``mean`` and ``rstd`` are CPU tensors of one shape."""
    worst = _loops()[0]
    if worst is not None and _loopable(mean, rstd):
        return worst(mean.data_ptr(), rstd.data_ptr(), mean.numel()) <= CENTRED_MAX
    return mean.detach().mul(rstd.detach()).abs_().max().item() <= CENTRED_MAX


def _eval_centred(running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> bool:
    """Evaluation batch norm's test, ``|rm| * rsqrt(rv + eps) <= CENTRED_MAX`` for every
    channel, as ``rv - rm**2 / CENTRED_MAX**2 >= -eps`` (False for NaN)."""
    least = _loops()[1]
    rm, rv = running_mean, running_var
    if least is not None and _loopable(rm, rv):
        return least(rv.data_ptr(), rm.data_ptr(), rm.numel(), _INV_K2) >= -eps
    return torch.addcmul(rv, rm, rm, value=_INV_K2).min().item() >= -eps


def _row_shifted(input: torch.Tensor, k: int) -> torch.Tensor:
    """``input`` minus the first element of each row of its last ``k`` dims (detached);
    half precision as it is (see :data:`_HALF`)."""
    if input.dtype in _HALF:
        return input
    x = input.detach()  # slices of a detached tensor skip autograd's view bookkeeping
    if k == 1:  # x[..., :1] as one as_strided call (a tuple index costs twice as much)
        shift = x.as_strided(x.shape[:-1] + (1,), x.stride(), x.storage_offset())
    else:
        lead = x.shape[: x.dim() - k]
        shift = x.reshape(lead + (-1,))[..., :1].reshape(lead + (1,) * k)
    return input - shift


def layer_norm(input, shape: tuple, weight, bias, eps: float) -> torch.Tensor:
    """torch's layer norm: on the CPU checked (redone on the input minus torch's row mean
    when off-centre), on CUDA of the input minus the first element of each row."""
    _record("layer_norm")
    return _layer_norm(input, shape, weight, bias, eps)


def _layer_norm(input, shape: tuple, weight, bias, eps: float) -> torch.Tensor:
    if _checked(input):
        y, mean, rstd = torch.native_layer_norm(input, shape, weight, bias, eps)
        if _centred(mean, rstd):
            return y
        return torch.native_layer_norm(input - mean.detach(), shape, weight, bias, eps)[0]
    return torch.layer_norm(_row_shifted(input, len(shape)), shape, weight, bias, eps, False)


def rms_norm(input, shape: tuple, weight, eps: float) -> torch.Tensor:
    """torch's ``F.rms_norm`` (no mean, nothing to shift)."""
    _record("rms_norm")
    return torch.rms_norm(input, shape, weight, eps)


def takes_fused(family: str, x: torch.Tensor, backend: str, *tensors) -> bool:
    """:func:`chooses` for the fused ops, float32 only: x float32, and ``chooses`` holds
    every other tensor (residual, parameters, shift/scale) to x's dtype and device. Half
    precision keeps the kernels, whose ``residual_in_fp32`` h torch's add would not give."""
    return x.dtype is torch.float32 and chooses(family, x, backend, *tensors)


def _fresh_sum(x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """h = x + residual, or a copy of x: always a new tensor, never x itself."""
    return x.clone() if residual is None else x + residual


def add_rms_norm(x, residual, shape: tuple, weight, eps: float):
    """``(y, h)``: torch's add, then torch's RMS norm of h (nothing to shift)."""
    _record("add_rms_norm")
    h = _fresh_sum(x, residual)
    return torch.rms_norm(h, shape, weight, eps), h


def add_layer_norm(x, residual, shape: tuple, weight, bias, eps: float):
    """``(y, h)``: torch's add, then :func:`layer_norm`'s checked (CPU) or shifted (CUDA)
    torch layer norm of h."""
    _record("add_layer_norm")
    h = _fresh_sum(x, residual)
    return _layer_norm(h, shape, weight, bias, eps), h


def modulated_layer_norm(x, shift, scale, eps: float) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` with shift/scale (N, D) broadcast over the tokens:
    :func:`layer_norm`'s checked (CPU) or shifted (CUDA) torch layer norm without affine,
    then one ``addcmul``."""
    _record("modulated_layer_norm")
    bshape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    x_hat = _layer_norm(x, (x.shape[-1],), None, None, eps)
    return torch.addcmul(shift.reshape(bshape), x_hat, scale.reshape(bshape) + 1.0)


def _grouped_shift(input: torch.Tensor, groups: int) -> torch.Tensor:
    """``input`` minus, per sample and group, the group's first element (detached); half
    precision as it is."""
    if input.dtype in _HALF:
        return input
    x = input.detach()
    n, c = x.shape[:2]
    if groups == c:  # instance norm: the first element of each plane, broadcast
        return input - _first(x, one_sample=False)
    grouped = x.reshape(n, groups, -1)[:, :, :1]  # (N, G, 1)
    return (input.reshape(n, groups, -1) - grouped).reshape(input.shape)


def dense(x: torch.Tensor) -> bool:
    """Contiguous, or channels-last contiguous: the layouts torch's group norm kernel takes
    as they are."""
    return x.is_contiguous() or (
        x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    )


def group_norm(input, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """torch's group norm (instance norm: ``groups = C``): on the CPU checked (redone on
    the input minus torch's group mean when off-centre), on CUDA of the group-shifted
    input."""
    _record("group_norm")
    if _checked(input) and dense(input):
        n, c = input.shape[:2]
        hw = input.numel() // (n * c)
        y, mean, rstd = torch.native_group_norm(input, weight, bias, n, c, hw, groups, eps)
        mean = mean.detach()  # group norm's statistics are differentiable outputs
        if _centred(mean, rstd):
            return y
        # the (N, G) group means repeated for each group's channels, broadcast over positions
        per_channel = mean.repeat_interleave(c // groups, dim=1)
        x = input - per_channel.reshape((n, c) + (1,) * (input.dim() - 2))
        if not dense(x):
            x = x.contiguous()
        return torch.native_group_norm(x, weight, bias, n, c, hw, groups, eps)[0]
    return torch.group_norm(_grouped_shift(input, groups), groups, weight, bias, eps, False)


def _channel_shifted(input: torch.Tensor, running_mean: Optional[torch.Tensor], momentum):
    """``input`` minus its first value in each channel (detached), with ``running_mean``
    (when given) moved by ``s * m / (1 - m)`` so that torch's update of it from the shifted
    input lands on the mean of ``input`` (see :func:`batch_norm_train`; momentum < 1)."""
    x = input.detach()
    if running_mean is not None:
        # through .data: no version-counter bump, as torch's own in-kernel update.
        # torch's autograd keeps a reference to running_mean (unused by the training
        # backward), so a bump would make an earlier graph through this layer refuse
        # to run backward. The (C,) view of the shifts is made directly (a reshape of
        # the (1, C, 1, ...) view costs as much as the add on a small layer)
        first = x.as_strided((x.shape[1],), (x.stride(1),), x.storage_offset())
        running_mean.data.add_(first, alpha=momentum / (1.0 - momentum))
    return input - _first(x, one_sample=True)  # (1, C, 1, ...) shifts


# How many calls of a training BatchNorm layer shift first after a call of it had to be
# redone (see _batch_norm_train_cpu)
SHIFT_FIRST_CALLS = 64
# id(running_mean) -> [weakref to it, calls left to shift first]. By identity, with a weak
# reference whose callback drops the entry: a layer that is gone leaves nothing, a copied
# layer starts unmarked, and nothing is stored on the user's tensors (a Python attribute
# on a buffer would be pickled into their checkpoints). torch.utils.weak's
# WeakIdKeyDictionary does the same at ~2.6 us a hit, this at ~0.3 us.
_SHIFT_FIRST: dict = {}


def _shift_first(running_mean: torch.Tensor) -> bool:
    """Whether this layer's call shifts first (and count the call against its mark)."""
    entry = _SHIFT_FIRST.get(id(running_mean))
    if entry is None or entry[0]() is not running_mean or entry[1] <= 0:
        return False
    entry[1] -= 1
    return True


def _mark_off_centre(running_mean: torch.Tensor) -> None:
    key = id(running_mean)
    entry = _SHIFT_FIRST.get(key)
    if entry is not None and entry[0]() is running_mean:
        entry[1] = SHIFT_FIRST_CALLS
        return

    def forget(ref, key=key):
        if _SHIFT_FIRST.get(key, (None,))[0] is ref:
            del _SHIFT_FIRST[key]

    _SHIFT_FIRST[key] = [weakref.ref(running_mean, forget), SHIFT_FIRST_CALLS]


def batch_norm_train(
    input, running_mean: Optional[torch.Tensor], running_var, weight, bias, momentum, eps
) -> torch.Tensor:
    """Training batch norm on the channel-shifted input (half precision: unshifted).

    torch updates ``running_mean`` in place with the mean of ``x - s`` and saves it for
    backward, so it may not be touched afterwards; instead it is moved beforehand by
    ``s * m / (1 - m)``, which torch's update ``(1 - m) r + m mean(x - s)`` turns into
    ``(1 - m) r + m mean(x)``. Needs ``momentum < 1`` (the caller checks it).
    """
    _record("batch_norm")
    if running_mean is not None and dispatch.transforming():
        raise RuntimeError(
            "batch_norm: training with running statistics inside a torch.func transform "
            "(grad, vmap, ...) would update running_mean/running_var in place, which the "
            "transform cannot do (torch's BatchNorm refuses it too); use "
            "track_running_stats=False, eval mode, or "
            "torch.func.replace_all_batch_norm_modules_(model) first"
        )
    if _checked(input):
        return _batch_norm_train_cpu(input, running_mean, running_var, weight, bias, momentum, eps)
    x = input if input.dtype in _HALF else _channel_shifted(input, running_mean, momentum)
    return torch.batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps, _cudnn(input)
    )


def _batch_norm_train_cpu(input, running_mean, running_var, weight, bias, momentum, eps):
    """Training batch norm on the CPU, checked. torch's kernel accumulates the batch mean
    and the squared deviations in float64 (``at::acc_type`` of float on the CPU), so the
    running statistics it updates are right even off-centre; an off-centre call recomputes
    only the output, on the input minus torch's batch mean, with no running statistics.

    A layer whose data sits off centre call after call would pay that second kernel call
    every time. A call that had to be redone therefore marks its layer (keyed by its
    ``running_mean``; :func:`_mark_off_centre`): its next :data:`SHIFT_FIRST_CALLS` calls
    shift the input first, as on CUDA, by its first value in each channel, with the same
    ``s * m / (1 - m)`` move of ``running_mean`` so that torch's update lands on the mean
    of the input (momentum < 1); then one unshifted call asks again. One of its own values
    leaves the batch centred to within that value's distance from the mean; the check
    still runs on every shifted call. The mark is the batches' own verdict: the running
    statistics (tried here before) average over batches and miss a layer whose batches
    sit off centre while their mixture does not (batch 1, a channel nearly constant over
    a 4x4 map), and their test cost a compiled call on every call."""
    x = input
    if running_mean is not None and momentum < 1.0 and _shift_first(running_mean):
        x = _channel_shifted(input, running_mean, momentum)
    y, mean, invstd = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    if _centred(mean, invstd):
        return y
    if x is input and running_mean is not None:
        _mark_off_centre(running_mean)
    x = x - mean.detach().reshape((1, input.shape[1]) + (1,) * (input.dim() - 2))
    return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)[0]


def batch_norm_eval(input, running_mean, running_var, weight, bias, eps) -> torch.Tensor:
    """Evaluation batch norm. CPU: torch's kernel with the running statistics when every
    ``|running_mean| * rsqrt(running_var + eps)`` is within :data:`CENTRED_MAX` (the same
    error analysis as in training: y is formed as ``x * a + (b - running_mean * a)``);
    otherwise, and on CUDA, ``input - running_mean`` normalized with mean 0 (half precision:
    torch's own evaluation with the running mean)."""
    _record("batch_norm")
    if _checked(input) and _eval_centred(running_mean, running_var, eps):
        return torch.native_batch_norm(
            input, weight, bias, running_mean, running_var, False, 0.0, eps
        )[0]
    x, mean = input, running_mean
    if input.dtype not in _HALF:
        view = (1, input.shape[1]) + (1,) * (input.dim() - 2)
        x, mean = input - running_mean.reshape(view), torch.zeros_like(running_mean)
    return torch.batch_norm(x, weight, bias, mean, running_var, False, 0.0, eps, _cudnn(input))
