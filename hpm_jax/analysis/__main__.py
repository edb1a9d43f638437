"""`python -m hpm_jax.analysis`: the program is `hpm_jax.cli.analysis` (flags, errors); what
it measures and writes is `hpm_jax.analysis.checkpoint_analysis.run`. No library code here."""

if __name__ == "__main__":
    from hpm_jax.cli.analysis import console_main

    console_main("python -m hpm_jax.analysis")
