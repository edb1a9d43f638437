"""Small batches of real photographs, offline: crops of matplotlib's bundled sample photo.

x = photo_crops(16, size=32)        # float32 (16, 32, 32, 3) in [0, 1]
"""

from __future__ import annotations

import numpy as np
import pytest


def photo_crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """`n` random square crops (random scale) of a real photo, resized to `size`."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        photo = image.convert("RGB")
    rng = np.random.default_rng(seed)
    width, height = photo.size
    crops = []
    for _ in range(n):
        side = int(rng.integers(size, min(width, height)))
        left, top = rng.integers(0, width - side), rng.integers(0, height - side)
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size))
        crops.append(np.asarray(crop, np.float32) / 255.0)
    return np.stack(crops)
