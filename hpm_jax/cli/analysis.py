"""`hpm-analysis` (and `python -m hpm_jax.analysis`): the flags around the analysis's `run`.

    hpm-analysis --checkpoint=/tmp/hpm_demo/hpm/model --out=/tmp/analysis
    hpm-analysis --checkpoint=/tmp/hpm_demo --out=/tmp/analysis --num_examples=1000

What it measures and writes: `hpm_jax.analysis.checkpoint_analysis` (its `run`, flag-free).
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from hpm_jax import cli

# hpm-analysis, or python -m hpm_jax.analysis (console_main names it); data and plots: "all".
with cli.program_imports("hpm-analysis", extra="all"):
    from hpm_jax.analysis import checkpoint_analysis as program
    from hpm_jax.analysis import sensitivity

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (with model.json).")
_OUT = flags.DEFINE_string("out", None, "Where summary.json, per_sample.npz and PNGs go.")
_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name (hpm_jax.data).")
_SPLIT = flags.DEFINE_string("split", "test", "Split to analyse.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory ('' = default).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000, "First N examples of the split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Batch size (HPM's batch context).")
_HEADS = flags.DEFINE_list("heads", [], "Subset of fc,l2,hpm to analyse (default: all).")
_RADII = flags.DEFINE_list(
    "relative_radii", [str(r) for r in sensitivity.DEFAULT_RELATIVE_RADII],
    "Perturbation radii as fractions of the mean feature norm.",
)  # fmt: skip
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 4, "Random directions per sample.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Projected gradient steps (worst case).")
_CONTEXT = flags.DEFINE_enum(
    "context", "joint", sensitivity.CONTEXTS, "Batch context of HPM's perturbations."
)
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split for FC models' prototypes.")
_PROTOTYPE_EXAMPLES = flags.DEFINE_integer(
    "prototype_examples", 10000, "Training images whose class means become P_ema (FC models)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random directions.")


def main(argv: list[str], prog: str = "hpm-analysis") -> None:
    del argv  # cli.run refuses positional arguments
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
    cli.require(prog, checkpoint=_CHECKPOINT.value, out=_OUT.value)
    try:
        result = program.run(
            _CHECKPOINT.value, os.path.abspath(_OUT.value), dataset=_DATASET.value,
            split=_SPLIT.value, num_examples=_NUM_EXAMPLES.value, batch_size=_BATCH_SIZE.value,
            heads=tuple(_HEADS.value), relative_radii=tuple(float(r) for r in _RADII.value),
            num_draws=_NUM_DRAWS.value, num_steps=_NUM_STEPS.value, context=_CONTEXT.value,
            train_split=_TRAIN_SPLIT.value, prototype_examples=_PROTOTYPE_EXAMPLES.value,
            data_dir=_DATA_DIR.value or None, seed=_SEED.value,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:  # every check of run names the fix
        cli.fail(prog, cli.one_line(e))
    summary = result["summary"]
    print(program.report(summary))
    print(f"({summary['seconds']} s on {jax.device_count()} devices) -> {_OUT.value}")


def console_main(prog: str = "hpm-analysis") -> None:
    """`hpm-analysis` (prog "python -m hpm_jax.analysis" when run so): user errors are one line
    and exit code 2 (`hpm_jax.cli`)."""
    cli.show_in_help(__name__)
    cli.run(prog, lambda argv, _overrides: main(argv, prog), config=False)


if __name__ == "__main__":
    console_main()
