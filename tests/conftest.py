import os
import sys

import pytest
import torch

# Triton decides when a kernel is decorated (normkit.ops.triton's import) whether it
# compiles for a GPU or runs in Triton's NumPy interpreter. Without a CUDA device the
# interpreter is the only way the suite can exercise the triton backend, so turn it
# on before anything imports triton (importing torch does not). An explicit setting wins.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.dirname(__file__))  # tests share tolerance.py / hostile.py

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a user's NORMKIT_BACKEND must not leak in."""
    monkeypatch.delenv("NORMKIT_BACKEND", raising=False)
