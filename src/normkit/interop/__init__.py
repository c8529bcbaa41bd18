"""Interop: LRN (and the other norms) into and out of ONNX, Caffe and TensorFlow.

Import:

* :func:`lrn_from_onnx` / :func:`lrn_layers_from_onnx`: ONNX ``LRN`` nodes;
* :func:`lrn_layers_from_caffe`: a Caffe ``.prototxt`` (no Caffe needed);
* :func:`lrn_from_tensorflow` / :func:`lrn_layers_from_tensorflow`: TensorFlow's
  parameters and graph ``LRN`` ops.

Export: :func:`export_onnx` writes standard ONNX operators for every normkit layer.
See ``docs/interop.md``.
"""

from .caffe import lrn_layers_from_caffe
from .export import export_onnx, register_exporter
from .onnx_import import lrn_from_onnx, lrn_layers_from_onnx
from .tf_import import lrn_from_tensorflow, lrn_layers_from_tensorflow

__all__ = [
    "lrn_from_onnx",
    "lrn_layers_from_onnx",
    "lrn_layers_from_caffe",
    "lrn_from_tensorflow",
    "lrn_layers_from_tensorflow",
    "export_onnx",
    "register_exporter",
]
