"""Fashion-MNIST with the small CNN: the configuration that runs on a laptop CPU.

    python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir=/tmp/fmnist
    python -m hpm_jax.demo --config=configs/fashion_mnist.py:local --workdir=/tmp/fmnist \
        --config.train.num_steps=50

Data: TFDS `fashion_mnist` when prepared, else the Debian package `dataset-fashion-mnist`
(offline). `:local` is a smaller, faster variant.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.dataset.data_dir = ""  # "" = TFDS's default directory

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.num_classes = 10
    config.model.kwargs = ml_collections.ConfigDict({"in_channels": 1, "image_size": 28})

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128
    config.train.num_steps = 1000
    config.train.learning_rate = 0.05
    config.train.momentum = 0.9
    config.train.weight_decay = 5e-4
    config.train.log_every_steps = 100

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000

    if arg == "local":
        config.train.num_steps = 200
        config.train.log_every_steps = 50
    return config
