"""The `hpm-train` program as `python -m hpm_jax.train`:

    python -m hpm_jax.train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist_at
    python -m hpm_jax.train --config=configs/imagenet.py --check_config

Flags and errors: `hpm_jax.cli.train`; the library: `hpm_jax.training.train.run`.
A shim: no library code.
"""

if __name__ == "__main__":
    from hpm_jax.cli.train import console_main

    console_main()
