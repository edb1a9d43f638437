"""The `hpm-analysis` program as `python -m hpm_jax.analysis`:

    python -m hpm_jax.analysis --checkpoint=/tmp/hpm_demo/hpm/model --out=/tmp/analysis

Flags and errors: `hpm_jax.cli.analysis`; what it measures and writes:
`hpm_jax.analysis.checkpoint_analysis.run`. A shim: no library code.
"""

if __name__ == "__main__":
    from hpm_jax.cli.analysis import console_main

    console_main("python -m hpm_jax.analysis")
