"""Sensitivity analysis of FC, l2 and HPM heads: margins, Lipschitz constants, perturbations.

    from hpm_jax.analysis import analyze, write_figures
    result = analyze(model, variables, batches)          # heads from the model's head type
    result["summary"]["heads"]["fc"]["worst_case"]["flip_rate"]
    write_figures(result, "/tmp/analysis")               # histograms.png, perturbations.png

A model directory end to end (data, prototypes for an FC model, files; needs the `data`
extra): `hpm_jax.analysis.checkpoint_analysis.run`.

Command line: `python -m hpm_jax.analysis --checkpoint=DIR --out=DIR`. Definitions are in
`hpm_jax.analysis.sensitivity`'s docstring.
"""

from hpm_jax.analysis.plots import write_figures
from hpm_jax.analysis.sensitivity import (
    CONTEXTS,
    DEFAULT_RELATIVE_RADII,
    Head,
    analyze,
    head_logits_fn,
    input_gradients,
    isolated,
    margin_gradients,
    margins,
    measure_features,
    model_heads,
    random_perturbations,
    summarize,
    unit_directions,
    worst_case_perturbations,
)

__all__ = [
    "CONTEXTS",
    "DEFAULT_RELATIVE_RADII",
    "Head",
    "analyze",
    "head_logits_fn",
    "input_gradients",
    "isolated",
    "margin_gradients",
    "margins",
    "measure_features",
    "model_heads",
    "random_perturbations",
    "summarize",
    "unit_directions",
    "worst_case_perturbations",
    "write_figures",
]
