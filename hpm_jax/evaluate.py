"""`python -m hpm_jax.evaluate`: the program is `hpm_jax.cli.evaluate` (flags, errors); the library
is `hpm_jax.evaluation.evaluate` (`run`). No library code lives here."""

if __name__ == "__main__":
    from hpm_jax.cli.evaluate import console_main

    console_main()
