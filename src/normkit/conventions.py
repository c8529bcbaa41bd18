"""Every framework's Local Response Normalization mapped onto one canonical form.

All LRN variants in the wild compute

    y_c = x_c * (k + alpha / D * S_c) ** (-beta)
    S_c = sum_{j = c - B .. c + A} x_j ** 2          (across channels)

with channels outside ``[0, C-1]`` counted as zero and the divisor ``D``
constant at the borders (it never shrinks to the number of real channels).
Within a channel (Caffe's ``WITHIN_CHANNEL``) the window is a ``size x size``
spatial box instead, zero padded, with ``D = size**2``.

They differ only in

* ``D``: 1 ("raw" alpha: TensorFlow, the AlexNet paper, Chainer), ``size``
  (Caffe, PyTorch, ONNX, ...) or ``size**2`` (spatial windows);
* ``B``/``A`` for even sizes (PyTorch looks back ``size//2``, ONNX looks ahead
  ``size//2``: mirror images of each other);
* what ``k`` does (Caffe's ``WITHIN_CHANNEL`` ignores it and uses 1);
* defaults and parameter names (TensorFlow takes a radius, not a size).

This module is a leaf: it imports nothing from normkit and nothing from torch,
so the reference, the docs generator and the interop code can all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = [
    "CanonicalLRN",
    "Convention",
    "CONVENTIONS",
    "ALIASES",
    "get_convention",
    "canonicalize",
    "from_canonical",
    "conventions_table_markdown",
]

REGIONS = ("across", "within")


@dataclass(frozen=True)
class CanonicalLRN:
    """One LRN, convention-free.

    ``y = x * (k + alpha * S) ** -beta`` where ``S`` sums ``x**2`` over the
    window ``[c - back, c + ahead]`` (across) or the box
    ``[h - back, h + ahead] x [w - back, w + ahead]`` (within), zero padded.
    ``alpha`` here is the coefficient of the sum: the framework's alpha already
    divided by its divisor ``D``.
    """

    region: str
    size: int  # the framework's window size n (channels, or box side)
    back: int  # B: neighbours looked at before the centre
    ahead: int  # A: neighbours looked at after the centre
    alpha: float  # coefficient of the window sum (framework alpha / D)
    beta: float
    k: float

    @property
    def width(self) -> int:
        """Number of taps per window axis (B + A + 1)."""
        return self.back + self.ahead + 1


@dataclass(frozen=True)
class Convention:
    """How one framework spells LRN.

    Attributes:
        name: preset name accepted by ``convention=``.
        framework: human-readable origin.
        across_divisor_power: D = size ** power for the across-channel window
            (0 = raw alpha, 1 = alpha / size).
        even: window for even sizes: ``"torch"`` (back size//2, ahead
            (size-1)//2), ``"onnx"`` (back (size-1)//2, ahead size//2),
            ``"wide"`` (back = ahead = size//2, i.e. size+1 taps) or
            ``"reject"``.
        within: ``None`` if the framework has no within-channel LRN, else
            ``"k-ignored"`` (constant 1, Caffe) or ``"k-honoured"``.
        within_divisor_power: D = size ** power for the spatial box.
        defaults: the framework's defaults in normkit's names
            (size, alpha, beta, k); ``None`` where the framework has none.
        param_names: the framework's own names for (size, alpha, beta, k).
        layout: the tensor layout the framework uses.
        notes: traps worth knowing.
    """

    name: str
    framework: str
    across_divisor_power: int
    even: str
    within: Optional[str]
    within_divisor_power: int
    defaults: Dict[str, Optional[float]]
    param_names: Tuple[str, str, str, str]
    layout: str
    notes: str = ""
    raw_alpha: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw_alpha", self.across_divisor_power == 0)

    def window(self, size: int) -> Tuple[int, int]:
        """(back, ahead) of the across-channel window for ``size``."""
        if size % 2 == 1:
            return (size - 1) // 2, (size - 1) // 2
        if self.even == "torch":
            return size // 2, (size - 1) // 2
        if self.even == "onnx":
            return (size - 1) // 2, size // 2
        if self.even == "wide":
            return size // 2, size // 2
        raise ValueError(
            f"LRN convention {self.name!r}: size must be odd, got size={size}; "
            f"{self.framework} has no even-sized window. Use an odd size, or "
            "convention='torch' (looks back size//2) / 'onnx' (looks ahead size//2)."
        )


def _defaults(size, alpha, beta, k):
    return {"size": size, "alpha": alpha, "beta": beta, "k": k}


CONVENTIONS: Dict[str, Convention] = {
    c.name: c
    for c in [
        Convention(
            "torch",
            "PyTorch torch.nn.functional.local_response_norm",
            1,
            "torch",
            None,
            0,
            _defaults(None, 1e-4, 0.75, 1.0),
            ("size", "alpha", "beta", "k"),
            "(N, C, *)",
            "any rank >= 3; even sizes look back size//2 and ahead (size-1)//2",
        ),
        Convention(
            "onnx",
            "ONNX LRN (= cuDNN, oneDNN)",
            1,
            "onnx",
            None,
            0,
            _defaults(None, 1e-4, 0.75, 1.0),
            ("size", "alpha", "beta", "bias"),
            "(N, C, *)",
            "even sizes look back (size-1)//2 and ahead size//2: the mirror of PyTorch",
        ),
        Convention(
            "caffe",
            "BVLC Caffe LRN layer",
            1,
            "reject",
            "k-ignored",
            2,
            _defaults(5, 1.0, 0.75, 1.0),
            ("local_size", "alpha", "beta", "k"),
            "NCHW",
            "WITHIN_CHANNEL ignores k (uses 1) and divides alpha by local_size**2",
        ),
        Convention(
            "caffe-cudnn",
            "Caffe built with cuDNN (CuDNNLCNLayer), OpenVINO",
            1,
            "reject",
            "k-honoured",
            2,
            _defaults(5, 1.0, 0.75, 1.0),
            ("local_size", "alpha", "beta", "k"),
            "NCHW",
            "like caffe, but WITHIN_CHANNEL honours k",
        ),
        Convention(
            "tensorflow",
            "TensorFlow tf.nn.local_response_normalization",
            0,
            "reject",
            None,
            0,
            _defaults(11, 1.0, 0.5, 1.0),
            ("depth_radius", "alpha", "beta", "bias"),
            "NHWC",
            "raw alpha; takes depth_radius r, window 2r+1 (default r=5: 11 channels)",
        ),
        Convention(
            "paddle",
            "PaddlePaddle 2.x paddle.nn.functional.local_response_norm",
            1,
            "torch",
            None,
            0,
            _defaults(None, 1e-4, 0.75, 1.0),
            ("size", "alpha", "beta", "k"),
            "NCHW",
            "a port of PyTorch's recipe",
        ),
        Convention(
            "mxnet",
            "MXNet LRN operator",
            1,
            "reject",
            None,
            0,
            _defaults(None, 1e-4, 0.75, 2.0),
            ("nsize", "alpha", "beta", "knorm"),
            "NCHW",
            "default knorm=2",
        ),
        Convention(
            "chainer",
            "Chainer local_response_normalization",
            0,
            "wide",
            None,
            0,
            _defaults(5, 1e-4, 0.75, 2.0),
            ("n", "alpha", "beta", "k"),
            "NCHW",
            "raw alpha; even n sums n+1 channels (n//2 each side)",
        ),
        Convention(
            "alexnet",
            "AlexNet paper (Krizhevsky et al. 2012), section 3.3",
            0,
            "reject",
            None,
            0,
            _defaults(5, 1e-4, 0.75, 2.0),
            ("n", "alpha", "beta", "k"),
            "NCHW",
            "raw alpha; Krizhevsky's own code divides by n, BVLC's AlexNet uses alpha/n and k=1",
        ),
        Convention(
            "cuda-convnet",
            "cuda-convnet cmrnorm (across) / rnorm (within)",
            1,
            "torch",
            "k-honoured",
            2,
            _defaults(None, None, None, 1.0),
            ("size", "addScale", "powScale", "minDiv"),
            "CHWN",
            "alpha/size across, alpha/size**2 within, PyTorch orientation for even sizes",
        ),
    ]
}

ALIASES = {
    "pytorch": "torch",
    "cudnn": "onnx",
    "onednn": "onnx",
    "tf": "tensorflow",
    "openvino": "caffe-cudnn",
    "cuda_convnet": "cuda-convnet",
    "caffe_cudnn": "caffe-cudnn",
}


def get_convention(name: str) -> Convention:
    """Look up a preset by name or alias (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"LRN convention must be a string, got {type(name).__name__}")
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in CONVENTIONS:
        known = ", ".join(sorted(CONVENTIONS))
        raise ValueError(f"unknown LRN convention {name!r}; choose one of: {known}")
    return CONVENTIONS[key]


def _check_number(what: str, value, *, positive=False, non_negative=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"LRN: {what} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"LRN: {what} must be finite, got {value}; pass a finite number")
    if positive and value <= 0:
        raise ValueError(f"LRN: {what} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(
            f"LRN: {what} must be >= 0, got {value}; a negative value can make "
            "the base of the power negative (NaN output)"
        )
    return value


def canonicalize(
    size, alpha, beta, k, *, region: str = "across", convention: str = "torch"
) -> CanonicalLRN:
    """Translate one framework's LRN parameters into the canonical form.

    ``size``, ``alpha`` and ``k`` carry the meaning of ``convention``: for
    ``"tensorflow"`` pass ``size = 2 * depth_radius + 1`` and the raw alpha.

    Raises:
        ValueError / TypeError naming the invariant, the value and the fix.
    """
    conv = get_convention(convention)
    if region not in REGIONS:
        raise ValueError(f"LRN: region must be 'across' or 'within', got {region!r}")
    if isinstance(size, bool) or not isinstance(size, int):
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        else:
            raise TypeError(f"LRN: size must be an int, got {type(size).__name__} {size!r}")
    if size < 1:
        raise ValueError(f"LRN: size must be >= 1, got {size}; the window includes the centre")
    alpha = _check_number("alpha", alpha, non_negative=True)
    beta = _check_number("beta", beta, non_negative=True)
    k = _check_number("k", k, non_negative=True)

    if region == "across":
        back, ahead = conv.window(size)
        divisor = float(size) ** conv.across_divisor_power
        return CanonicalLRN("across", size, back, ahead, alpha / divisor, beta, k)

    if conv.within is None:
        raise ValueError(
            f"LRN convention {conv.name!r} ({conv.framework}) has no within-channel LRN; "
            "use convention='caffe' (Caffe WITHIN_CHANNEL: k ignored) or 'caffe-cudnn' "
            "(k honoured)"
        )
    if conv.name in ("caffe", "caffe-cudnn") and size % 2 == 0:
        raise ValueError(
            f"LRN convention {conv.name!r}: WITHIN_CHANNEL local_size must be odd, got {size}"
        )
    back, ahead = (size // 2, (size - 1) // 2)
    divisor = float(size) ** conv.within_divisor_power
    k_eff = 1.0 if conv.within == "k-ignored" else k
    return CanonicalLRN("within", size, back, ahead, alpha / divisor, beta, k_eff)


def from_canonical(spec: CanonicalLRN, convention: str) -> Dict[str, float]:
    """Express a canonical LRN in ``convention``'s own parameter names.

    Returns a dict keyed by that framework's names (e.g. ``depth_radius``,
    ``bias`` for TensorFlow). Raises ``ValueError`` when the framework cannot
    express the layer (even window it does not have, within-channel LRN in a
    framework without one, Caffe WITHIN_CHANNEL with k != 1).
    """
    conv = get_convention(convention)
    name_size, name_alpha, name_beta, name_k = conv.param_names
    if spec.region == "within":
        if conv.within is None:
            raise ValueError(
                f"{conv.framework} has no within-channel LRN; this layer cannot be expressed there"
            )
        if spec.back != spec.ahead:
            raise ValueError(
                f"{conv.framework}: within-channel LRN needs an odd box, "
                f"this layer has {spec.width} taps with back={spec.back}"
            )
        if conv.within == "k-ignored" and spec.k != 1.0:
            raise ValueError(
                f"{conv.framework} WITHIN_CHANNEL ignores k (always 1) but this layer has "
                f"k={spec.k}; use the 'caffe-cudnn' convention or set k=1"
            )
        alpha = spec.alpha * float(spec.size) ** conv.within_divisor_power
        out = {name_size: spec.size, name_alpha: alpha, name_beta: spec.beta}
        if conv.within == "k-honoured":
            out[name_k] = spec.k
        return out

    # across: find the framework size whose window equals (back, ahead)
    width = spec.width
    candidates = [width]
    if conv.even == "wide" and spec.back == spec.ahead and width % 2 == 1:
        candidates.append(width - 1)
    for size in candidates:
        try:
            if conv.window(size) == (spec.back, spec.ahead):
                break
        except ValueError:
            continue
    else:
        raise ValueError(
            f"{conv.framework} cannot express an LRN window looking back {spec.back} and ahead "
            f"{spec.ahead} channels"
            + (
                "; its even sizes look the other way (mirror the channel axis, or use the "
                "other convention)"
                if spec.back != spec.ahead and conv.even != "reject"
                else ""
            )
        )
    # the divisor uses the framework's own size for this window
    alpha = spec.alpha * float(size) ** conv.across_divisor_power
    if conv.name == "tensorflow":
        return {"depth_radius": (size - 1) // 2, "bias": spec.k, "alpha": alpha, "beta": spec.beta}
    return {name_size: size, name_alpha: alpha, name_beta: spec.beta, name_k: spec.k}


def _fmt_default(v):
    if v is None:
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


def conventions_table_markdown() -> str:
    """The conventions table of ``docs/conventions.md``, generated from the presets."""
    rows = [
        "| convention | framework | alpha divisor D (across) | window, odd n | window, even n "
        "| within channel | defaults (n, alpha, beta, k) | own names | layout | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    even_text = {
        "torch": "back n//2, ahead (n-1)//2",
        "onnx": "back (n-1)//2, ahead n//2",
        "wide": "n//2 each side (n+1 taps)",
        "reject": "rejected",
    }
    within_text = {
        None: "—",
        "k-ignored": "n×n box, alpha/n², **k ignored (1)**",
        "k-honoured": "n×n box, alpha/n², k honoured",
    }
    for conv in CONVENTIONS.values():
        d = conv.defaults
        defaults = ", ".join(_fmt_default(d[key]) for key in ("size", "alpha", "beta", "k"))
        divisor = {0: "1 (raw alpha)", 1: "n"}[conv.across_divisor_power]
        rows.append(
            f"| `{conv.name}` | {conv.framework} | {divisor} | ±(n-1)/2 | {even_text[conv.even]} "
            f"| {within_text[conv.within]} | {defaults} | {', '.join(conv.param_names)} "
            f"| {conv.layout} | {conv.notes} |"
        )
    aliases = ", ".join(f"`{a}` → `{t}`" for a, t in sorted(ALIASES.items()))
    rows.append("")
    rows.append(f"Aliases: {aliases}.")
    return "\n".join(rows) + "\n"


_DOC_HEADER = """# LRN conventions

<!-- Generated by `python -m normkit.conventions > docs/conventions.md`; do not edit by hand:
     tests/test_conventions.py fails when this file and conventions.py drift apart. -->

Every LRN normkit knows is one canonical form

    y_c = x_c * (k + alpha/D * S_c) ** (-beta),   S_c = sum_{j = c-B .. c+A} x_j**2

with channels outside [0, C-1] counted as zero and D constant at the borders (a window
that hangs over the edge still divides by n, never by the number of real channels; a
size larger than C still divides by n). Within a channel the window is an n x n spatial
box, zero padded, with D = n**2. `normkit.conventions.canonicalize` turns a framework's
parameters into (B, A, alpha/D, beta, k); `from_canonical` goes back and raises when the
framework cannot express the layer.

"""

_DOC_FOOTER = """
## Conversions

- TensorFlow to size form: n = 2*depth_radius + 1, alpha_size = alpha_tf * n, k = bias;
  the channel axis moves from last (NHWC) to 1.
- Raw alpha to size form: alpha_size = n * alpha_raw (n**2 for a spatial box).
- ONNX and PyTorch agree for odd sizes. For even sizes they are mirror images:
  ONNX(x) = flip_C(PyTorch(flip_C(x))). An even-sized PyTorch LRN exported as an ONNX
  `LRN` node is therefore wrong.

## Traps (each has a test)

- depth_radius confused with size; alpha off by a factor of n between ports.
- Even sizes: four incompatible windows (torch, onnx, chainer's n+1 taps, rejected).
- Caffe's WITHIN_CHANNEL ignores k; a cuDNN build of Caffe (and OpenVINO) honours it:
  `convention="caffe"` vs `"caffe-cudnn"`.
- float16: x**2 overflows above |x| ~ 256; normkit squares, sums and raises in float32.
- Running add/subtract or prefix-sum windows in float32 cancel when one channel is 1000x
  louder than its neighbours (and 1e38 becomes NaN); normkit sums the window directly.
"""


def conventions_doc() -> str:
    """The whole of ``docs/conventions.md``."""
    return _DOC_HEADER + conventions_table_markdown() + _DOC_FOOTER


if __name__ == "__main__":
    print(conventions_doc(), end="")
