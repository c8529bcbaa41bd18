"""One LRN in every framework's terms, with the warnings a naive port needs.

Used by ``normkit convert``; importable for programs that want the same report as
data (:func:`describe` returns plain dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from ..conventions import from_canonical
from ..modules.lrn import LocalResponseNorm

__all__ = ["LRNReport", "describe", "fmt"]

FRAMEWORKS = ("torch", "onnx", "caffe", "tensorflow")
_NAMES = {"caffe": "Caffe", "onnx": "ONNX", "tensorflow": "TensorFlow"}


def fmt(value) -> str:
    """A number as a person would write it (9 significant digits, no float noise)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:.1f}"
        return f"{value:.9g}"
    return str(value)


@dataclass
class LRNReport:
    """What ``normkit convert`` says about one LRN.

    Attributes:
        name: layer / node / op name.
        source: ``"caffe"``, ``"onnx"`` or ``"tensorflow"``.
        where: location in the file (``"line 12"``, ``"main graph"``).
        written: the parameters in the source's own names, defaults filled in.
        defaulted: the names in ``written`` that the file leaves at their default.
        module: the exact :class:`~normkit.LocalResponseNorm`.
        forms: framework -> its parameters (dict), or the reason it cannot express the layer.
        warnings: where a naive port would be wrong.
        notes: context that is not a trap.
    """

    name: str
    source: str
    where: str
    written: Dict[str, object]
    defaulted: List[str]
    module: LocalResponseNorm
    forms: Dict[str, Union[Dict[str, object], str]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        spec = self.module.spec
        return {
            "name": self.name,
            "source": self.source,
            "where": self.where,
            "written": self.written,
            "defaulted": self.defaulted,
            "canonical": {
                "region": spec.region,
                "size": spec.size,
                "back": spec.back,
                "ahead": spec.ahead,
                "alpha_over_D": spec.alpha,
                "beta": spec.beta,
                "k": spec.k,
            },
            "normkit": self.normkit_call(),
            "forms": self.forms,
            "warnings": self.warnings,
            "notes": self.notes,
        }

    def normkit_call(self) -> str:
        """Python that builds the same layer from the source's own parameters."""
        w = self.written
        if self.source == "caffe":
            args = (
                f"local_size={w['local_size']}, alpha={fmt(w['alpha'])}, "
                f"beta={fmt(w['beta'])}, k={fmt(w['k'])}, norm_region='{w['norm_region']}'"
            )
            if self.module.convention == "caffe-cudnn":
                args += ", engine='cudnn'"
            return f"normkit.LocalResponseNorm.from_caffe({args})"
        if self.source == "onnx":
            return (
                f"normkit.LocalResponseNorm.from_onnx(size={w['size']}, "
                f"alpha={fmt(w['alpha'])}, beta={fmt(w['beta'])}, bias={fmt(w['bias'])})"
            )
        return (
            f"normkit.LocalResponseNorm.from_tensorflow(depth_radius={w['depth_radius']}, "
            f"bias={fmt(w['bias'])}, alpha={fmt(w['alpha'])}, beta={fmt(w['beta'])})"
        )

    def formula(self) -> str:
        spec = self.module.spec
        if spec.region == "across":
            window = f"sum_{{j=c-{spec.back}..c+{spec.ahead}}} x_j^2"
            where = "across channels"
        else:
            window = (
                f"sum over the {spec.width}x{spec.width} box "
                f"(h-{spec.back}..h+{spec.ahead}, w-{spec.back}..w+{spec.ahead}) of x^2"
            )
            where = "within each channel, zero padded"
        return (
            f"y = x * ({fmt(spec.k)} + {fmt(spec.alpha)} * {window})^-{fmt(spec.beta)}   [{where}]"
        )


def _forms(module: LocalResponseNorm) -> Dict[str, Union[Dict[str, object], str]]:
    forms: Dict[str, Union[Dict[str, object], str]] = {}
    for framework in FRAMEWORKS:
        try:
            if framework == "caffe":
                forms[framework] = module.to_caffe()
            else:
                forms[framework] = dict(from_canonical(module.spec, framework))
        except ValueError as exc:
            forms[framework] = f"cannot express: {exc}"
    return forms


def _traps(report: LRNReport) -> None:
    spec = report.module.spec
    w = report.written
    warn, note = report.warnings.append, report.notes.append
    n = spec.width

    if spec.region == "across" and spec.back != spec.ahead:
        warn(
            f"even size {spec.size}: this window looks back {spec.back} and ahead {spec.ahead} "
            f"channels; torch.nn.LocalResponseNorm({spec.size}) looks back {spec.size // 2} "
            f"and ahead {(spec.size - 1) // 2} (the mirror image). Mapping this node to "
            "torch.nn.LocalResponseNorm, as onnx2torch does, is wrong; use "
            f"normkit.LocalResponseNorm.from_onnx({spec.size}, ...). onnxruntime's CPU LRN "
            "rejects even sizes; normkit.interop.export_onnx writes an explicit decomposition."
        )

    if spec.region == "across" and n > 1:
        d_alpha = spec.alpha * n
        if report.source == "tensorflow":
            warn(
                f"alpha scaling: TensorFlow's alpha={fmt(w['alpha'])} is raw (not divided by "
                f"the window); Caffe, ONNX and PyTorch divide alpha by size={n}, so they need "
                f"alpha={fmt(d_alpha)}. Copying alpha unchanged makes the layer {n}x weaker."
            )
        else:
            warn(
                f"alpha scaling: {_NAMES[report.source]}'s alpha={fmt(d_alpha)} is divided by the "
                f"window size {n}; TensorFlow's alpha is raw and must be {fmt(spec.alpha)}. "
                f"Copying alpha unchanged into tf.nn.local_response_normalization makes the "
                f"layer {n}x stronger."
            )
    if spec.region == "across" and spec.back == spec.ahead:
        r = spec.back
        if report.source == "tensorflow":
            warn(
                f"depth_radius={r} is a radius: the window is 2*{r}+1 = {n} channels, so "
                f"ONNX/Caffe/PyTorch size={n}, not {r} (old tf2onnx wrote depth_radius as the "
                "size)."
                + (
                    " depth_radius is not set: TensorFlow's default is 5 (11 channels)."
                    if "depth_radius" in report.defaulted
                    else ""
                )
            )
        else:
            note(
                f"TensorFlow takes a radius: depth_radius={r} for this {n}-channel window "
                f"(writing {n} as depth_radius would give {2 * n + 1} channels)."
            )

    if spec.region == "within":
        if report.source == "caffe":
            k = w["k"]
            if report.module.convention == "caffe" and k != 1.0:
                warn(
                    f"Caffe ignores k={fmt(k)} within a channel: BVLC Caffe's WITHIN_CHANNEL "
                    "always adds 1. A cuDNN build (engine: CUDNN, or DEFAULT compiled with "
                    "cuDNN) honours k, so this prototxt computes different things on different "
                    "builds; normkit follows BVLC (pass default_engine='cudnn' for the other)."
                )
            elif report.module.convention == "caffe" and "k" not in report.defaulted:
                note(
                    "k is written but BVLC Caffe's WITHIN_CHANNEL never reads it (it is 1 "
                    "here anyway)."
                )
        warn(
            f"within-channel LRN (a {n}x{n} spatial box, alpha/{n}^2) has no LRN op in ONNX, "
            "PyTorch or TensorFlow: a port to their LRN is wrong; normkit runs it exactly and "
            "exports it to ONNX as an explicit decomposition."
        )

    if report.source == "tensorflow":
        note(
            "layout: TensorFlow's LRN is NHWC (channels last); the PyTorch, ONNX and Caffe "
            "forms expect NCHW: permute with x.permute(0, 3, 1, 2), or keep NHWC with "
            "normkit's channel_dim=-1 (the default of from_tensorflow)."
        )
    if report.source == "caffe" and "alpha" in report.defaulted:
        note("alpha is not set: Caffe's default is 1.0 (PyTorch's and ONNX's is 1e-4).")
    if report.source == "onnx" and w["bias"] != 1.0 and spec.region == "across":
        note(f"bias={fmt(w['bias'])} is Caffe's and PyTorch's k.")


def describe(
    name: str,
    source: str,
    where: str,
    written: Dict[str, object],
    defaulted: List[str],
    module: LocalResponseNorm,
) -> LRNReport:
    """Build the full report (forms in every framework, warnings, notes) for one LRN."""
    report = LRNReport(name, source, where, written, list(defaulted), module)
    report.forms = _forms(module)
    _traps(report)
    return report


def reports_from_caffe(prototxt, default_engine: str = "caffe") -> List[LRNReport]:
    from .caffe import LRN_DEFAULTS, read_caffe_lrn

    out = []
    for lrn in read_caffe_lrn(prototxt):
        written = {key: getattr(lrn, key) for key in LRN_DEFAULTS}
        where = f"line {lrn.line}, {lrn.syntax} syntax"
        if lrn.bottom or lrn.top:
            where += f"; {', '.join(lrn.bottom) or '?'} -> {', '.join(lrn.top) or '?'}"
        defaulted = [k for k in LRN_DEFAULTS if k not in lrn.explicit]
        out.append(
            describe(lrn.name, "caffe", where, written, defaulted, lrn.module(default_engine))
        )
    return out


def reports_from_onnx(model) -> List[LRNReport]:
    from .onnx_import import read_onnx_lrn

    out = []
    for lrn in read_onnx_lrn(model):
        written = {"size": lrn.size, "alpha": lrn.alpha, "beta": lrn.beta, "bias": lrn.bias}
        defaulted = [k for k in written if k not in lrn.explicit]
        out.append(
            describe(lrn.name, "onnx", f"{lrn.graph} graph", written, defaulted, lrn.module())
        )
    return out


def reports_from_tensorflow(source) -> List[LRNReport]:
    from .tf_import import TF_DEFAULTS, read_tf_lrn

    out = []
    for lrn in read_tf_lrn(source):
        written = {key: getattr(lrn, key) for key in TF_DEFAULTS}
        defaulted = [k for k in TF_DEFAULTS if k not in lrn.explicit]
        out.append(
            describe(lrn.name, "tensorflow", "GraphDef (NHWC)", written, defaulted, lrn.module())
        )
    return out


def reports(path, fmt_: Optional[str] = None) -> List[LRNReport]:
    """Reports for every LRN of a model file; ``fmt_`` overrides the guess from the suffix."""
    kind = fmt_ or guess_format(path)
    if kind == "caffe":
        return reports_from_caffe(path)
    if kind == "onnx":
        return reports_from_onnx(path)
    if kind == "tensorflow":
        return reports_from_tensorflow(path)
    raise ValueError(f"unknown model format {kind!r}; choose caffe, onnx or tensorflow")


def guess_format(path) -> str:
    """``caffe`` / ``onnx`` / ``tensorflow`` from the file's suffix."""
    import os

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    table = {".prototxt": "caffe", ".onnx": "onnx", ".pb": "tensorflow", ".pbtxt": "tensorflow"}
    if suffix not in table:
        raise ValueError(
            f"cannot tell the format of {os.fspath(path)!r} from its suffix "
            f"{suffix!r}: expected .prototxt (Caffe), .onnx, .pb or .pbtxt "
            "(TensorFlow GraphDef); or pass --format"
        )
    return table[suffix]
