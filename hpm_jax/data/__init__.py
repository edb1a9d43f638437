"""Data: TFDS sources and grain pipelines that yield global batches sharded over the mesh.

    from hpm_jax import data
    from hpm_jax.runtime.sharding import make_mesh

    mesh = make_mesh()
    train = data.get_source("cifar10", "train[:90%]")     # {"image": uint8 HWC, "label": int}
    for batch in data.train_iterator(train, batch_size=128, mesh=mesh, seed=0):
        ...  # batch["image"]: float32 NHWC in [0, 1], batch["label"]: int32, sharded on "data"
    test = data.get_source("cifar10", "test")
    for batch in data.eval_iterator(test, batch_size=500, mesh=mesh):
        ...  # batch["mask"] is False on the padding of the last batch

Images reach models in [0, 1]; normalisation lives inside the models. A dataset that is not
prepared raises `DatasetNotFoundError` at once, with the recipe to prepare it.
"""

from hpm_jax.data.augment import (
    EVAL_PREPROCESSING,
    TRAIN_AUGMENTATIONS,
    eval_preprocessing,
    train_augmentation,
)
from hpm_jax.data.pipelines import GlobalBatches, eval_iterator, train_iterator
from hpm_jax.data.sources import (
    KNOWN_DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    FirstRecords,
    Source,
    dataset_info,
    get_source,
)

__all__ = [
    "EVAL_PREPROCESSING",
    "KNOWN_DATASETS",
    "TRAIN_AUGMENTATIONS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FirstRecords",
    "GlobalBatches",
    "Source",
    "dataset_info",
    "eval_iterator",
    "eval_preprocessing",
    "get_source",
    "train_augmentation",
    "train_iterator",
]
