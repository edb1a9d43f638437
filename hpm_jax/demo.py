"""The `hpm-demo` program as `python -m hpm_jax.demo`:

    python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir=/tmp/hpm_demo

Flags and errors: `hpm_jax.cli.demo`; the library: `hpm_jax.experiments.demo.run`.
A shim: no library code.
"""

if __name__ == "__main__":
    from hpm_jax.cli.demo import console_main

    console_main()
