import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests share tolerance.py / hostile.py

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a user's NORMKIT_BACKEND must not leak in."""
    monkeypatch.delenv("NORMKIT_BACKEND", raising=False)
