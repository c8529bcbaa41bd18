"""Raw kernels: tensors in, tensors out. No autograd, no nn.Module.

``torch_ops`` is the portable fallback every backend is measured against.
"""
