"""The `hpm-evaluate` program as `python -m hpm_jax.evaluate`:

    python -m hpm_jax.evaluate --config=configs/fashion_mnist.py --checkpoint=DIR --workdir=OUT
    python -m hpm_jax.evaluate --robustbench Carmon2019Unlabeled --workdir /tmp/carmon_eval

Flags and errors: `hpm_jax.cli.evaluate`; the library: `hpm_jax.evaluation.evaluate.run`.
A shim: no library code.
"""

if __name__ == "__main__":
    from hpm_jax.cli.evaluate import console_main

    console_main()
