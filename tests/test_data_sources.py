"""Sources: TFDS (mocked), the real Debian Fashion-MNIST files, and fast failure when absent."""

import gzip
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hpm_jax import data
from hpm_jax.data import offline, sources

needs_fashion_mnist = pytest.mark.skipif(
    not offline.fashion_mnist_files_present(),
    reason="needs the Debian package dataset-fashion-mnist",
)


def _idx_labels(path):
    # Independent of the code under test: an idx1 file is an 8-byte header, then uint8 labels.
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=8)


def test_unknown_dataset_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="cifar10, cifar100, imagenet2012, mnist, fashion_mnist"):
        data.get_source("cifar11", "train")


def test_dataset_info():
    assert [data.dataset_info(n).num_classes for n in data.KNOWN_DATASETS] == [
        10,
        100,
        1000,
        10,
        10,
    ]
    assert data.dataset_info("fashion_mnist").image_shape == (28, 28, 1)
    assert data.dataset_info("imagenet2012").eval_split == "validation"


def test_mock_cifar10_records_are_uint8_hwc_with_int_labels(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        source = data.get_source("cifar10", "train", data_dir=tmp_path)
        assert len(source) == 12
        records = [source[i] for i in range(len(source))]
    for record in records:
        assert set(record) == {"image", "label"}
        assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
        assert type(record["label"]) is int and 0 <= record["label"] < 10


@needs_fashion_mnist
def test_debian_fashion_mnist_full_splits(tmp_path):
    # An empty data_dir: no TFDS copy, so the Debian files must be used.
    train = data.get_source("fashion_mnist", "train", data_dir=tmp_path)
    test = data.get_source("fashion_mnist", "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (60000, 10000)
    record = train[0]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (28, 28, 1)
    assert type(record["label"]) is int
    labels = np.array([train[i]["label"] for i in range(len(train))])
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
    directory = offline.DEBIAN_FASHION_MNIST_DIR
    first = _idx_labels(directory / "train-labels-idx1-ubyte.gz")[:20]
    assert [train[i]["label"] for i in range(20)] == first.tolist()
    first_test = _idx_labels(directory / "t10k-labels-idx1-ubyte.gz")[:20]
    assert [test[i]["label"] for i in range(20)] == first_test.tolist()
    # Not blank: the real images have ink in them.
    assert 0 < record["image"].mean() < 255


@needs_fashion_mnist
def test_debian_fashion_mnist_slices(tmp_path):
    train = data.get_source("fashion_mnist", "train", data_dir=tmp_path)
    head = data.get_source("fashion_mnist", "train[:1000]", data_dir=tmp_path)
    held_out = data.get_source("fashion_mnist", "train[90%:]", data_dir=tmp_path)
    kept = data.get_source("fashion_mnist", "train[:90%]", data_dir=tmp_path)
    assert (len(head), len(held_out), len(kept)) == (1000, 6000, 54000)
    np.testing.assert_array_equal(head[999]["image"], train[999]["image"])
    np.testing.assert_array_equal(held_out[0]["image"], train[54000]["image"])
    assert held_out[5999]["label"] == train[59999]["label"]
    both = data.get_source("fashion_mnist", "train[-2:]+test[:3]", data_dir=tmp_path)
    assert len(both) == 5
    test = data.get_source("fashion_mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(both[2]["image"], test[0]["image"])


def test_parse_split():
    sizes = {"train": 60000, "test": 10000}
    assert offline.parse_split("train", sizes) == [("train", 0, 60000)]
    assert offline.parse_split("train[:90%]", sizes) == [("train", 0, 54000)]
    assert offline.parse_split("train[10:-5]", sizes) == [("train", 10, 59995)]
    assert offline.parse_split("test[-1000:]+train[:1]", sizes) == [
        ("test", 9000, 10000),
        ("train", 0, 1),
    ]
    for bad in ["validation", "train[1:2", "train[a:]", "train[::2]"]:
        with pytest.raises(ValueError):
            offline.parse_split(bad, sizes)


def _get_and_time(*args, **kwargs):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_source(*args, **kwargs)
    return str(error.value), time.monotonic() - start


def test_missing_dataset_fails_fast_with_the_recipe(tmp_path, monkeypatch):
    # As on a user's machine with TensorFlow but no network: the download must not be tried.
    monkeypatch.setattr(sources, "tensorflow_available", lambda: True)
    monkeypatch.setattr(sources, "network_reachable", lambda *a, **k: False)
    message, seconds = _get_and_time("cifar100", "train", data_dir=tmp_path)
    assert seconds < 10
    assert "'cifar100'" in message and str(tmp_path) in message
    assert "unreachable" in message
    assert f"tfds build cifar100 --file_format=array_record --data_dir={tmp_path}" in message


def test_missing_dataset_without_tensorflow_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "tensorflow_available", lambda: False)
    message, seconds = _get_and_time("mnist", "test", data_dir=tmp_path)
    assert seconds < 10
    assert "TensorFlow is not installed" in message and "tfds build mnist" in message


def test_missing_imagenet_explains_the_manual_download(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_reachable", lambda *a, **k: False)
    message, seconds = _get_and_time("imagenet2012", "validation", data_dir=tmp_path)
    assert seconds < 10
    assert "image-net.org" in message and "--manual_dir" in message


def test_missing_fashion_mnist_points_at_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nothing-here")
    monkeypatch.setattr(sources, "network_reachable", lambda *a, **k: False)
    message, seconds = _get_and_time("fashion_mnist", "train", data_dir=tmp_path)
    assert seconds < 10
    assert "apt-get install dataset-fashion-mnist" in message


def test_network_reachable_probe():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert sources.network_reachable("127.0.0.1", port, timeout=2)
    # The port was just released: nothing listens there now.
    start = time.monotonic()
    assert not sources.network_reachable("127.0.0.1", port, timeout=2)
    assert not sources.network_reachable("no-such-host.invalid", 443, timeout=2)
    assert time.monotonic() - start < 6


def test_first_records_is_a_prefix_that_keeps_the_name():
    class Records:
        name = "fashion_mnist"

        def __len__(self):
            return 5

        def __getitem__(self, index):
            return {"label": index}

    first = data.FirstRecords(Records(), 3)
    assert len(first) == 3 and first.name == "fashion_mnist"
    assert [first[i]["label"] for i in range(3)] == [0, 1, 2]
    with pytest.raises(IndexError):
        first[3]  # the fourth record exists in the source, not in the prefix
    assert len(data.FirstRecords(Records(), 99)) == 5  # a shorter source: all of it
