"""``normkit convert MODEL``: every LRN of a model, in every framework's terms.

Reads a Caffe ``.prototxt``, an ONNX ``.onnx`` file or a TensorFlow GraphDef
(``.pb`` / ``.pbtxt``) and prints, for each LRN, the parameters as written, the
formula it computes, the same layer in PyTorch, ONNX, Caffe and TensorFlow terms
(or why a framework cannot express it), and warnings where a naive port would be
wrong. ``--json`` prints the same as data. Exit status: 0 when the file was read
(with or without LRNs), 2 when it could not be.
"""

from __future__ import annotations

import json
import sys

from .interop.describe import FRAMEWORKS, fmt, reports


def add_arguments(parser) -> None:
    parser.add_argument(
        "model", help="a .prototxt (Caffe), .onnx, or .pb/.pbtxt (TensorFlow GraphDef) file"
    )
    parser.add_argument(
        "--format",
        choices=("caffe", "onnx", "tensorflow"),
        default=None,
        help="the model's format (default: from the file suffix)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _params(form) -> str:
    if isinstance(form, str):
        return form
    return ", ".join(f"{k}={fmt(v)}" for k, v in form.items())


def _line(framework: str, form) -> str:
    if isinstance(form, str):
        return form
    p = {k: fmt(v) for k, v in form.items()}
    if framework == "torch":
        return (
            f"torch.nn.LocalResponseNorm(size={p['size']}, alpha={p['alpha']}, "
            f"beta={p['beta']}, k={p['k']})"
        )
    if framework == "onnx":
        return f"LRN(size={p['size']}, alpha={p['alpha']}, beta={p['beta']}, bias={p['bias']})"
    if framework == "caffe":
        fields = " ".join(f"{k}: {v}" for k, v in p.items())
        return f"lrn_param {{ {fields} }}"
    return (
        f"tf.nn.local_response_normalization(x, depth_radius={p['depth_radius']}, "
        f"bias={p['bias']}, alpha={p['alpha']}, beta={p['beta']})  # NHWC"
    )


def format_text(path: str, found) -> str:
    lines = [f"{path}: {len(found)} LRN layer{'s' if len(found) != 1 else ''}"]
    for rep in found:
        written = ", ".join(
            f"{k}={fmt(v)}" for k, v in rep.written.items() if k not in rep.defaulted
        )
        defaults = ", ".join(f"{k}={fmt(v)}" for k, v in rep.written.items() if k in rep.defaulted)
        lines.append("")
        lines.append(f"{rep.name}  ({rep.source}, {rep.where})")
        lines.append(
            f"  as written   {written or '(nothing: all defaults)'}"
            + (f"  [defaults: {defaults}]" if defaults else "")
        )
        lines.append(f"  computes     {rep.formula()}")
        lines.append(f"  normkit      {rep.normkit_call()}")
        for framework in FRAMEWORKS:
            lines.append(f"  {framework:<12} {_line(framework, rep.forms[framework])}")
        for text in rep.warnings:
            lines.append(f"  WARNING: {text}")
        for text in rep.notes:
            lines.append(f"  note: {text}")
    if not found:
        lines.append("no LRN layers found")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    try:
        found = reports(args.model, args.format)
    except (ValueError, OSError, TypeError) as exc:
        print(f"normkit convert: {args.model}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # reading .onnx needs the onnx package
        print(
            f"normkit convert: {args.model}: {exc.name or exc} is needed to read this file "
            f"(pip install {exc.name or 'onnx'})",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "lrn": [r.as_dict() for r in found]}, indent=2))
    else:
        sys.stdout.write(format_text(args.model, found))
    return 0
