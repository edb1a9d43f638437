"""`python -m hpm_jax.demo`: the program is `hpm_jax.cli.demo` (flags, errors); the library is
`hpm_jax.experiments.demo` (`run`). No library code lives here."""

if __name__ == "__main__":
    from hpm_jax.cli.demo import console_main

    console_main()
