"""grain pipelines: global sharded batches, determinism, resumption, and complete evaluation."""

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from platform_support import take_devices

from hpm_jax import data
from hpm_jax.data import offline
from hpm_jax.data.pipelines import local_batches
from hpm_jax.runtime.sharding import data_sharding, make_mesh

NUM_EXAMPLES = 40  # 5 batches of 8 per epoch


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(take_devices(4))


@pytest.fixture
def cifar(tmp_path):
    # The mock stays on while the test reads: records are generated on access.
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        yield data.get_source("cifar10", "train", data_dir=tmp_path)


def _numpy(batches):
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in batches]


def _take(iterator, n):
    return _numpy(next(iterator) for _ in range(n))


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_are_float_unit_range_global_and_sharded(cifar, mesh):
    iterator = data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=0)
    with pytest.raises(TypeError, match="infinite"):
        len(iterator)
    batch = next(iterator)
    assert set(batch) == {"image", "label", "mask"}
    image, label = batch["image"], batch["label"]
    assert image.shape == (8, 32, 32, 3) and image.dtype == np.float32
    assert label.shape == (8,) and label.dtype == np.int32
    assert image.sharding.is_equivalent_to(data_sharding(mesh), image.ndim)
    assert label.sharding.is_equivalent_to(data_sharding(mesh), label.ndim)
    assert [s.data.shape for s in image.addressable_shards] == [(2, 32, 32, 3)] * 4
    values = np.asarray(image)
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.5
    assert np.asarray(batch["mask"]).all()


def test_train_stream_is_deterministic_per_seed(cifar, mesh):
    def first(seed):
        return _take(data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=seed), 3)

    _assert_same(first(0), first(0))
    other = first(1)
    assert any(
        not np.array_equal(a["image"], b["image"]) for a, b in zip(first(0), other, strict=True)
    )


def test_each_epoch_visits_every_example_once_in_a_new_order(cifar, mesh):
    batches = list(
        data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=3, augment="none", num_epochs=2)
    )
    assert len(batches) == 2 * NUM_EXAMPLES // 8
    epochs = [_numpy(batches[:5]), _numpy(batches[5:])]
    source_images = np.stack([cifar[i]["image"] for i in range(NUM_EXAMPLES)])
    source_labels = np.array([cifar[i]["label"] for i in range(NUM_EXAMPLES)])
    orders = []
    for epoch in epochs:
        images = np.concatenate([b["image"] for b in epoch])
        labels = np.concatenate([b["label"] for b in epoch])
        # Without augmentation the images are the stored ones scaled to [0, 1].
        uint8 = np.rint(images * 255).astype(np.uint8)
        np.testing.assert_allclose(images, uint8 / np.float32(255), atol=1e-6)
        order = [int(np.flatnonzero((source_images == im).all(axis=(1, 2, 3)))[0]) for im in uint8]
        assert sorted(order) == list(range(NUM_EXAMPLES))
        np.testing.assert_array_equal(labels, source_labels[order])
        orders.append(order)
    assert orders[0] != orders[1] and orders[0] != list(range(NUM_EXAMPLES))


def test_augmentation_changes_images_not_shapes_or_order(cifar, mesh):
    def first(augment):
        it = data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=0, augment=augment)
        return _take(it, 2)

    plain, augmented = first("none"), first("auto")  # auto = pad-crop-flip for CIFAR
    for a, b in zip(plain, augmented, strict=True):
        assert a["image"].shape == b["image"].shape
        np.testing.assert_array_equal(a["label"], b["label"])  # same shuffle
    changed = [
        not np.array_equal(a["image"][i], b["image"][i])
        for a, b in zip(plain, augmented, strict=True)
        for i in range(8)
    ]
    assert sum(changed) >= 12  # 1/81 chance of no shift per image, then 1/2 of no flip


def test_resuming_at_a_step_continues_the_same_stream(cifar, mesh):
    def stream(start_step):
        return data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=7, start_step=start_step)

    whole = _take(stream(0), 9)  # crosses the epoch boundary at step 5
    _assert_same(_take(stream(3), 6), whole[3:])
    finite = data.train_iterator(cifar, batch_size=8, mesh=mesh, seed=7, num_epochs=2)
    assert len(finite) == 10
    resumed = data.train_iterator(
        cifar, batch_size=8, mesh=mesh, seed=7, num_epochs=2, start_step=4
    )
    assert len(resumed) == 6
    _assert_same(_numpy(resumed), _numpy(finite)[4:])


def test_finite_stream_drops_only_the_last_incomplete_batch(tmp_path, mesh):
    with tfds.testing.mock_data(num_examples=37):
        source = data.get_source("cifar10", "train", data_dir=tmp_path)
        iterator = data.train_iterator(source, batch_size=8, mesh=mesh, seed=0, num_epochs=2)
        assert len(iterator) == 74 // 8 == len(list(iterator))


def test_batch_size_must_divide_over_devices(cifar, mesh):
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        data.train_iterator(cifar, batch_size=6, mesh=mesh, seed=0)
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        data.eval_iterator(cifar, batch_size=10, mesh=mesh)


def test_each_process_takes_its_slice_of_every_global_batch():
    examples = grain.MapDataset.range(100)
    for num_global_batches in [None, 12]:
        shares = [
            local_batches(
                examples,
                8,
                num_global_batches=num_global_batches,
                process_index=p,
                process_count=2,
            )
            for p in range(2)
        ]
        if num_global_batches is not None:
            assert [len(s) for s in shares] == [12, 12]
        for step in range(12):
            rebuilt = np.concatenate([shares[0][step], shares[1][step]])
            np.testing.assert_array_equal(rebuilt, np.arange(8 * step, 8 * step + 8))


def test_eval_covers_every_example_once_and_masks_the_padding(tmp_path, mesh):
    with tfds.testing.mock_data(num_examples=37):
        source = data.get_source("cifar10", "test", data_dir=tmp_path)
        iterator = data.eval_iterator(source, batch_size=8, mesh=mesh)
        assert len(iterator) == 5
        batches = _numpy(iterator)
        expected = np.stack([source[i]["image"] for i in range(37)]) / np.float32(255)
        expected_labels = [source[i]["label"] for i in range(37)]
    assert len(batches) == 5
    assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(40) < 37)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_allclose(images[:37], expected, atol=1e-6)
    assert labels[:37].tolist() == expected_labels
    assert not images[37:].any() and not labels[37:].any()


def test_imagenet_pipelines_produce_224_crops(tmp_path, mesh):
    with tfds.testing.mock_data(num_examples=8):  # mock images have random sizes
        train = data.get_source("imagenet2012", "train", data_dir=tmp_path)
        batch = next(data.train_iterator(train, batch_size=4, mesh=mesh, seed=0))
        assert batch["image"].shape == (4, 224, 224, 3)
        validation = data.get_source("imagenet2012", "validation", data_dir=tmp_path)
        batches = list(data.eval_iterator(validation, batch_size=4, mesh=mesh))
    assert [b["image"].shape for b in batches] == [(4, 224, 224, 3)] * 2


@pytest.mark.skipif(not offline.fashion_mnist_files_present(), reason="needs dataset-fashion-mnist")
def test_eval_over_real_fashion_mnist_test_split(tmp_path, mesh):
    source = data.get_source("fashion_mnist", "test", data_dir=tmp_path)
    batches = _numpy(data.eval_iterator(source, batch_size=1024, mesh=mesh))
    assert len(batches) == 10 and batches[0]["image"].shape == (1024, 28, 28, 1)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 10000 and mask[:10000].all()
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
