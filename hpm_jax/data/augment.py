"""Per-example image augmentation and evaluation preprocessing, in NumPy and Pillow.

Each function maps one uint8 HWC image (and, when random, a `np.random.Generator` that
grain seeds per example) to a uint8 HWC image; the pipelines pick them by name:

    augment = train_augmentation("auto", "cifar10")        # pad 4 + random crop + flip
    image = augment(image, np.random.default_rng(0))
    preprocess = eval_preprocessing("auto", "imagenet2012")  # resize 256 + center crop 224
    image = preprocess(image)

Names: training "none", "flip", "pad_crop", "pad_crop_flip" (CIFAR), "inception_crop_flip"
(ImageNet); evaluation "none", "resize_center_crop" (ImageNet). "auto" picks per dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from hpm_jax.runtime.extras import optional_import

Image = optional_import("PIL.Image", extra="data")

TrainAugmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
EvalPreprocessing = Callable[[np.ndarray], np.ndarray]

IMAGENET_SIZE = 224  # what ImageNet models see, train and evaluation
IMAGENET_RESIZE = 256  # shorter side before the evaluation center crop


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def pad_crop(image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """Zero-pads `padding` pixels on each side, then crops back to the original size at random.

    Zero padding, as `torchvision.transforms.RandomCrop(32, padding=4)` in the reference
    adversarial-training code, so models trained here see the same distribution.
    """
    height, width = image.shape[:2]
    # The crop's offset in the padded image, as a shift of the original: copying the overlap
    # into zeros is the same as padding then cropping, without building the padded image.
    dy, dx = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2) - padding)
    out = np.zeros_like(image)
    out[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = image[
        max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)
    ]
    return out


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The standard CIFAR training augmentation: pad 4 + random 32x32 crop + horizontal flip."""
    return random_flip(pad_crop(image, rng), rng)


def _resize(image: np.ndarray, size_hw: tuple[int, int], box=None) -> np.ndarray:
    """Bilinear resize (Pillow, antialiased when shrinking) of `box` (left, top, right, bottom)."""
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize(size_hw[::-1], Image.Resampling.BILINEAR, box=box))
    return out.reshape(*size_hw, channels)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int = IMAGENET_SIZE,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop: a random area fraction and aspect ratio, resized to size x size.

    Follows `torchvision.transforms.RandomResizedCrop`: ten tries at a box that fits, then a
    central crop with the aspect ratio clamped to `ratio`.
    """
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            h, w = height, round(height * ratio[1])
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return _resize(image, (size, size), box=(left, top, left + w, top + h))


def inception_crop_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The standard ImageNet training augmentation: random-resized-crop to 224 + flip."""
    return random_flip(random_resized_crop(image, rng), rng)


def resize_center_crop(
    image: np.ndarray, resize: int = IMAGENET_RESIZE, crop: int = IMAGENET_SIZE
) -> np.ndarray:
    """The standard ImageNet evaluation view: shorter side to `resize`, then a central crop.

    Sizes and rounding as `Resize(256)` + `CenterCrop(224)` in torchvision, which the
    PyTorch checkpoints this library imports were evaluated with.
    """
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = resize, int(resize * width / height)
    else:
        new_h, new_w = int(resize * height / width), resize
    resized = _resize(image, (new_h, new_w))
    top = round((new_h - crop) / 2)
    left = round((new_w - crop) / 2)
    return resized[top : top + crop, left : left + crop]


def _no_augmentation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return image


def _no_preprocessing(image: np.ndarray) -> np.ndarray:
    return image


TRAIN_AUGMENTATIONS: dict[str, TrainAugmentation] = {
    "none": _no_augmentation,
    "flip": random_flip,
    "pad_crop": pad_crop,
    "pad_crop_flip": pad_crop_flip,
    "inception_crop_flip": inception_crop_flip,
}
EVAL_PREPROCESSING: dict[str, EvalPreprocessing] = {
    "none": _no_preprocessing,
    "resize_center_crop": resize_center_crop,
}

# What "auto" means per dataset. Digits and clothing get no augmentation by default (flipping
# a digit changes it); pass "pad_crop" to opt in.
_AUTO_TRAIN = {
    "cifar10": "pad_crop_flip",
    "cifar100": "pad_crop_flip",
    "imagenet2012": "inception_crop_flip",
    "mnist": "none",
    "fashion_mnist": "none",
}
_AUTO_EVAL = {"imagenet2012": "resize_center_crop"}


def train_augmentation(
    augment: str | TrainAugmentation, dataset: str | None = None
) -> TrainAugmentation:
    """The training augmentation called `augment` ("auto": the standard one for `dataset`)."""
    if callable(augment):
        return augment
    if augment == "auto":
        if dataset not in _AUTO_TRAIN:
            raise ValueError(
                f"augment='auto' needs a known dataset name, got {dataset!r}; "
                f"pass one of {sorted(TRAIN_AUGMENTATIONS)} or a function (image, rng) -> image."
            )
        augment = _AUTO_TRAIN[dataset]
    if augment not in TRAIN_AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augment!r}; known: {sorted(TRAIN_AUGMENTATIONS)}.")
    return TRAIN_AUGMENTATIONS[augment]


def eval_preprocessing(
    preprocess: str | EvalPreprocessing, dataset: str | None = None
) -> EvalPreprocessing:
    """The evaluation preprocessing called `preprocess` ("auto": the standard one for `dataset`)."""
    if callable(preprocess):
        return preprocess
    if preprocess == "auto":
        preprocess = _AUTO_EVAL.get(dataset, "none")
    if preprocess not in EVAL_PREPROCESSING:
        raise ValueError(
            f"Unknown preprocessing {preprocess!r}; known: {sorted(EVAL_PREPROCESSING)}."
        )
    return EVAL_PREPROCESSING[preprocess]
