"""`python -m hpm_jax.study`: the program is `hpm_jax.cli.study` (flags, errors); the library is
`hpm_jax.experiments.study` (`run`). No library code lives here."""

if __name__ == "__main__":
    from hpm_jax.cli.study import console_main

    console_main()
