"""grain pipelines from a source to global batches sharded over the mesh.

    mesh = make_mesh()
    for step, batch in enumerate(train_iterator(source, batch_size=128, mesh=mesh, seed=0)):
        ...  # batch["image"]: float32 (128, H, W, C) in [0, 1]; batch["label"]: int32 (128,)
    for batch in eval_iterator(test_source, batch_size=500, mesh=mesh):
        ...  # plus batch["mask"]: bool (500,), False on the padding of the last batch

Every array is a global `jax.Array` split along the batch over the mesh's `data` axis; each
process reads and augments only its own slice of every global batch. The training stream is
a function of (seed, step) alone, so `train_iterator(..., start_step=k)` resumes exactly where
an uninterrupted run would be at step k, whatever the number of processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hpm_jax.data import augment as augment_lib
from hpm_jax.data.sources import Source
from hpm_jax.runtime.extras import optional_import
from hpm_jax.runtime.sharding import check_batch_divisible, data_sharding

grain = optional_import("grain", extra="data")

Batch = dict[str, jax.Array]


def _unit_float(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0


# Elementwise, so the result keeps the input's sharding; one compilation per batch shape.
_to_unit_float = jax.jit(_unit_float)


class GlobalBatches(Iterator[Batch]):
    """Iterator over global batches; `len()` is how many it yields in all, when finite."""

    def __init__(
        self,
        batches: grain.MapDataset,
        mesh: Mesh,
        *,
        num_batches: int | None,
        num_threads: int | None,
    ):
        self._length = num_batches
        if num_threads is None:
            num_threads = min(8, os.cpu_count() or 1)
        read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=max(2, 2 * num_threads)
        )
        self._local = iter(batches.to_iter_dataset(read_options))
        self._sharding = data_sharding(mesh)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("An infinite training stream (num_epochs=None) has no length.")
        return self._length

    def __next__(self) -> Batch:
        local = next(self._local)
        batch = {
            key: jax.make_array_from_process_local_data(self._sharding, value)
            for key, value in local.items()
        }
        # Images travel to the devices as uint8 (4x less than float32), are made float there.
        batch["image"] = _to_unit_float(batch["image"])
        return batch


def _example(image: np.ndarray, label: Any, mask: bool = True) -> dict[str, np.ndarray]:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"Expected a uint8 HWC image, got {image.dtype} {image.shape}.")
    return {"image": image, "label": np.int32(label), "mask": np.bool_(mask)}


def local_batches(
    examples: grain.MapDataset,
    batch_size: int,
    *,
    num_global_batches: int | None,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """This process's share of each global batch of `examples` (in order), as a dataset.

    Global batch k is examples [k * batch_size, (k + 1) * batch_size); process p holds its
    p-th contiguous slice, the rows its devices hold under `data_sharding` (devices of a mesh
    from `make_mesh` come ordered by process). Every process gets the same number of batches.
    """
    if batch_size % process_count:
        raise ValueError(f"Batch size {batch_size} not divisible by {process_count} processes.")
    per_process = batch_size // process_count
    batches = examples.batch(per_process, drop_remainder=True)
    if num_global_batches is not None:
        batches = batches[: num_global_batches * process_count]
    return batches[process_index::process_count]


def train_iterator(
    source: Source,
    *,
    batch_size: int,
    mesh: Mesh,
    seed: int,
    augment: str | augment_lib.TrainAugmentation = "auto",
    num_epochs: int | None = None,
    start_step: int = 0,
    num_threads: int | None = None,
) -> GlobalBatches:
    """Shuffled, augmented training batches: `{"image", "label", "mask"}` global arrays.

    Args:
      source: records `{"image": uint8 HWC, "label": int}`, e.g. from `get_source`.
      batch_size: the global batch size, divisible by the number of devices in `mesh`.
      mesh: the device mesh (`hpm_jax.runtime.sharding.make_mesh()`); batches split over `data`.
      seed: fixes the shuffle and the augmentation; each epoch is shuffled differently.
      augment: a name from `augment.TRAIN_AUGMENTATIONS`, "auto" (the standard augmentation
        of `source.name`), or a function (uint8 image, np.random.Generator) -> uint8 image.
      num_epochs: passes over the data; None repeats forever. Batches run across epoch
        boundaries; only the last incomplete global batch of a finite stream is dropped.
      start_step: the first batch to produce, to resume a run: the stream from step k is the
        uninterrupted stream's from step k.
      num_threads: threads reading and augmenting ahead of the consumer (default: the
        number of CPUs, at most 8).
    """
    check_batch_divisible(batch_size, mesh)
    if len(source) == 0:
        raise ValueError("The training source is empty.")
    augment_fn = augment_lib.train_augmentation(augment, getattr(source, "name", None))

    def augment_record(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return _example(augment_fn(np.asarray(record["image"]), rng), record["label"])

    # grain derives distinct seeds for the shuffle and the augmentation from `seed`; both are
    # functions of the position in the stream, so any step can be reached without replay.
    examples = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat(num_epochs)
        .random_map(augment_record)
    )
    num_global_batches = None if num_epochs is None else len(examples) // batch_size
    batches = local_batches(
        examples,
        batch_size,
        num_global_batches=num_global_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    num_batches = None if num_global_batches is None else max(0, num_global_batches - start_step)
    return GlobalBatches(
        batches[start_step:], mesh, num_batches=num_batches, num_threads=num_threads
    )


def eval_iterator(
    source: Source,
    *,
    batch_size: int,
    mesh: Mesh,
    preprocess: str | augment_lib.EvalPreprocessing = "auto",
    num_threads: int | None = None,
) -> GlobalBatches:
    """Every example once, in order: `{"image", "label", "mask"}` global arrays.

    The last batch is padded to `batch_size` with zero images (label 0) whose `mask` is False;
    reduce metrics with the mask. `len()` gives the number of batches, ceil(len(source) / B).

    Args:
      preprocess: a name from `augment.EVAL_PREPROCESSING`, "auto" (resize + center crop for
        ImageNet, nothing otherwise), or a function uint8 image -> uint8 image.
    """
    check_batch_divisible(batch_size, mesh)
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError("The evaluation source is empty.")
    preprocess_fn = augment_lib.eval_preprocessing(preprocess, getattr(source, "name", None))

    def load_record(index: int) -> dict[str, np.ndarray]:
        record = source[index]
        return _example(preprocess_fn(np.asarray(record["image"])), record["label"])

    padding = _example(np.zeros_like(load_record(0)["image"]), 0, mask=False)

    def load(index: int) -> dict[str, np.ndarray]:
        return load_record(index) if index < num_examples else padding

    num_batches = math.ceil(num_examples / batch_size)
    examples = grain.MapDataset.range(num_batches * batch_size).map(load)
    batches = local_batches(
        examples,
        batch_size,
        num_global_batches=num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return GlobalBatches(batches, mesh, num_batches=num_batches, num_threads=num_threads)
