"""The `hpm-study` program as `python -m hpm_jax.study`:

    python -m hpm_jax.study --config=configs/fashion_mnist_study.py --workdir=/tmp/study \\
        --config.init.checkpoint=/tmp/hpm_demo/at/model

Flags and errors: `hpm_jax.cli.study`; the library: `hpm_jax.experiments.study.run`.
A shim: no library code.
"""

if __name__ == "__main__":
    from hpm_jax.cli.study import console_main

    console_main()
