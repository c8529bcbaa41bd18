"""Data for the lab: scikit-learn's bundled digits, or the user's own ``.npz``.

The digits (1,797 grey 8x8 images of 0-9, shipped inside scikit-learn: no
download) are scaled from their 0..16 integer range to [0, 1] (source document 1's
min-max scaling) and split once, stratified, with a fixed seed, so that every
normalization sees exactly the same training and test images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dataset:
    """Train/test tensors: ``x`` is (N, C, H, W) float32, ``y`` is (N,) int64 in [0, classes)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple:
        return tuple(int(s) for s in self.x_train.shape[2:])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train": int(self.x_train.shape[0]),
            "test": int(self.x_test.shape[0]),
            "shape": list(self.x_train.shape[1:]),
            "classes": self.num_classes,
        }


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test) with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        # every class keeps at least one training example, even a class of one
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _make(name, x: np.ndarray, y: np.ndarray, test_fraction: float, split_seed: int) -> Dataset:
    train, test = _stratified_split(y, test_fraction, split_seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return Dataset(name, xt[train], yt[train], xt[test], yt[test], int(y.max()) + 1)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits as (N, 1, 8, 8) in [0, 1], stratified split (fixed seed)."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :] / 16.0  # pixels are integers 0..16
    return _make("digits (scikit-learn)", x, bunch.target, test_fraction, split_seed)


def load_npz(path: str, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """A user's ``.npz`` with arrays ``x`` (N, C, H, W) and ``y`` (N,) of integer labels.

    ``x`` is used as given (scale it yourself); labels must be 0..K-1. The split
    is stratified like the digits'. Every malformed file raises ValueError
    saying which invariant failed and how to fix it.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"--data: no such file {path!r}; pass an .npz written with "
            "numpy.savez(path, x=images, y=labels)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a non-npz file
        raise ValueError(
            f"--data: {path!r} is not a readable .npz archive ({exc}); write it "
            "with numpy.savez(path, x=images, y=labels)"
        ) from exc
    if not hasattr(archive, "files"):
        raise ValueError(
            f"--data: {path!r} holds a single array, not an .npz archive; write "
            "it with numpy.savez(path, x=images, y=labels)"
        )
    missing = [k for k in ("x", "y") if k not in archive.files]
    if missing:
        raise ValueError(
            f"--data: {path!r} lacks array(s) {missing} (it has "
            f"{archive.files}); the file needs x [N, C, H, W] and y [N]"
        )
    x, y = archive["x"], archive["y"]
    if x.ndim != 4:
        raise ValueError(
            f"--data: x must be 4-D [N, C, H, W], got shape {x.shape}; add a "
            "channel axis for grey images with x[:, None]"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"--data: x must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("--data: x contains NaN or infinity; clean or impute those pixels")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"--data: y must be 1-D with one label per image (N = {x.shape[0]}), "
            f"got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(
                f"--data: y must hold integer class labels, got dtype {y.dtype}; "
                "map classes to 0..K-1"
            )
    if y.min() < 0:
        raise ValueError(
            f"--data: labels must be >= 0, got minimum {int(y.min())}; map classes to 0..K-1"
        )
    if len(np.unique(y)) < 2:
        raise ValueError("--data: y holds a single class; classification needs at least 2")
    if x.shape[0] < 10:
        raise ValueError(f"--data: need at least 10 examples to split train/test, got {x.shape[0]}")
    if min(x.shape[2:]) < 4:
        raise ValueError(
            f"--data: images must be at least 4x4 (the net pools twice), got "
            f"{x.shape[2]}x{x.shape[3]}"
        )
    name = f"{os.path.basename(path)} (user data)"
    return _make(name, x.astype(np.float32), y.astype(np.int64), test_fraction, split_seed)


def load(path: str | None = None, split_seed: int = 0) -> Dataset:
    """The user's ``.npz`` when ``path`` is given, else the bundled digits."""
    return load_npz(path, split_seed=split_seed) if path else load_digits(split_seed=split_seed)
