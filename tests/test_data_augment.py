"""Augmentations: the geometry each one promises, checked on images whose content is known."""

import numpy as np
import pytest

from hpm_jax.data import augment


def _image(height, width, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def test_pad_crop_is_zero_padding_then_a_random_crop():
    image = _image(32, 32)
    offsets = set()
    for seed in range(100):
        top, left = np.random.default_rng(seed).integers(0, 9, size=2)
        offsets.add((int(top), int(left)))
        reference = np.pad(image, ((4, 4), (4, 4), (0, 0)))[top : top + 32, left : left + 32]
        out = augment.pad_crop(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, reference)
    assert len(offsets) > 40  # the offsets really vary over the 9 x 9 choices


def test_flip_mirrors_about_half_the_time():
    image = _image(4, 5)
    flips = 0
    for seed in range(200):
        out = augment.random_flip(image, np.random.default_rng(seed))
        if np.array_equal(out, image[:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 70 < flips < 130


def test_random_resized_crop_shape_range_and_determinism():
    image = _image(300, 400)
    out = augment.random_resized_crop(image, np.random.default_rng(0))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    again = augment.random_resized_crop(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    other = augment.random_resized_crop(image, np.random.default_rng(1))
    assert not np.array_equal(out, other)
    # A 1-pixel-tall strip never fits a box of the allowed aspect ratios: the fallback crop.
    strip = augment.random_resized_crop(_image(1, 500), np.random.default_rng(0), size=8)
    assert strip.shape == (8, 8, 3)


def test_resize_center_crop_takes_the_middle():
    # A horizontal ramp 0..255 over 400 columns. Resized to 256x341, the center crop keeps
    # resized columns 58.5 .. 282.5, so its edge values tell where the crop was taken.
    height, width = 300, 400
    columns = np.broadcast_to(np.linspace(0, 255, width).astype(np.uint8), (height, width))
    image = np.repeat(columns[..., None], 3, axis=2)
    out = augment.resize_center_crop(image)
    assert out.shape == (224, 224, 3)
    left_source_column = (341 - 224) / 2 * width / 341
    assert abs(int(out[112, 0, 0]) - 255 * left_source_column / (width - 1)) <= 2
    assert abs(int(out[112, 223, 0]) - 255 * (width - 1 - left_source_column) / (width - 1)) <= 2
    gray = augment.resize_center_crop(_image(256, 300, channels=1))
    assert gray.shape == (224, 224, 1)


def test_choosing_by_name():
    assert augment.train_augmentation("auto", "cifar100") is augment.pad_crop_flip
    assert augment.train_augmentation("auto", "imagenet2012") is augment.inception_crop_flip
    image = _image(28, 28, 1)
    rng = np.random.default_rng(0)
    assert augment.train_augmentation("auto", "fashion_mnist")(image, rng) is image
    assert augment.eval_preprocessing("auto", "imagenet2012") is augment.resize_center_crop
    assert augment.eval_preprocessing("auto", "cifar10")(image) is image
    with pytest.raises(ValueError, match="needs a known dataset"):
        augment.train_augmentation("auto", None)
    with pytest.raises(ValueError, match="Unknown augmentation"):
        augment.train_augmentation("mixup", "cifar10")
