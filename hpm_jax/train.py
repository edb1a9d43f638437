"""`python -m hpm_jax.train`: the program is `hpm_jax.cli.train` (flags, errors); the library is
`hpm_jax.training.train` (`run`). No library code lives here."""

if __name__ == "__main__":
    from hpm_jax.cli.train import console_main

    console_main()
