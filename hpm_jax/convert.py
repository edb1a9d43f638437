"""`python -m hpm_jax.convert`: the program is `hpm_jax.cli.convert` (flags, errors); the
library is `hpm_jax.interop.convert`. No library code lives here."""

if __name__ == "__main__":
    from hpm_jax.cli.convert import run

    run()
