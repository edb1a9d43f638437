"""Evaluation data given as arrays: an .npz of images and labels, loaded and checked.

    x, y = load_npz("/tmp/x_test.npz")               # x (N, H, W, C) float32, y (N,) int32
    check_images(x, y, num_classes=10)               # ArrayDataError naming the fix, or None

Models take float NHWC images in [0, 1] (README, "Models"). The checks catch the usual
mistakes before an evaluation starts: PyTorch's NCHW layout, 0..255 values, labels outside
the model's classes, mismatched lengths.
"""

from __future__ import annotations

import os

import numpy as np


class ArrayDataError(ValueError):
    """Images or labels that a model cannot be evaluated on; the message names the fix."""


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32, y int32) from the arrays `x` and `y` of the .npz at `path`."""
    if not os.path.isfile(path):
        raise ArrayDataError(f"no data file {path!r}; write one with np.savez(path, x=x, y=y).")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise ArrayDataError(
                    f"{path} has arrays {f.files}, not {missing}; write it with "
                    "np.savez(path, x=images, y=labels)."
                )
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as e:
        if isinstance(e, ArrayDataError):
            raise
        raise ArrayDataError(f"{path} is not a readable .npz ({e}).") from e
    if not np.issubdtype(y.dtype, np.integer):
        raise ArrayDataError(f"{path}: y must hold integer class labels, got {y.dtype}.")
    return np.asarray(x, np.float32), np.asarray(y, np.int32)


def check_images(x: np.ndarray, y: np.ndarray, *, num_classes: int | None = None) -> None:
    """Raise ArrayDataError unless x is (N, H, W, C) in [0, 1] with C in {1, 3} and y holds
    N labels (in [0, num_classes) when given)."""
    if x.ndim != 4:
        raise ArrayDataError(f"images must be (N, H, W, C); got shape {x.shape}.")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise ArrayDataError(
            f"images of shape {x.shape} look NCHW (PyTorch's layout); models take NHWC: "
            "pass x.transpose(0, 2, 3, 1)."
        )
    if x.shape[-1] not in (1, 3):
        raise ArrayDataError(f"images must have 1 or 3 channels last; got shape {x.shape}.")
    if y.shape != (x.shape[0],):
        raise ArrayDataError(f"labels of shape {y.shape} do not match {x.shape[0]} images.")
    if not np.isfinite(x).all():
        raise ArrayDataError("images hold NaN or infinite values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        fix = " (0..255 values: divide by 255)" if hi > 1 and lo >= 0 else ""
        raise ArrayDataError(
            f"images must lie in [0, 1]; these span [{lo:g}, {hi:g}]{fix}. Models normalise "
            "inside, so pass unnormalised images."
        )
    if num_classes is not None and y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ArrayDataError(
            f"labels span [{int(y.min())}, {int(y.max())}] but the model has {num_classes} "
            f"classes (0..{num_classes - 1}); is this the model's dataset?"
        )
