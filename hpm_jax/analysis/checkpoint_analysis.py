"""Sensitivity analysis of a checkpoint's heads on a dataset split: JSON, arrays and figures.

    python -m hpm_jax.analysis --checkpoint=/tmp/hpm_demo/model_1795491322 --out=/tmp/analysis
    python -m hpm_jax.analysis --checkpoint=/tmp/hpm_demo --out=/tmp/analysis \
        --dataset=fashion_mnist --split=test --num_examples=1000 --batch_size=250

--checkpoint is a directory with model.json (`save_model`, `python -m hpm_jax.convert`), or
a workdir whose summary.json names one (the demo's). An HPM checkpoint gives the fc, l2
(against P_ema) and hpm heads; an FC checkpoint gets an HPM head around its FC weights, with
P_ema the class means of `--prototype_examples` training images (s = 1; the relative
quantities do not depend on s). Writes OUT/summary.json, OUT/per_sample.npz (samples first),
OUT/histograms.png and OUT/perturbations.png.

    from hpm_jax.analysis.checkpoint_analysis import run     # in Python
    result = run("/tmp/hpm_demo/hpm/model", "/tmp/analysis", num_examples=1000)

The command line (its flags, `hpm-analysis`) is `hpm_jax.cli.analysis`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hpm_jax import data
from hpm_jax.analysis import plots, sensitivity
from hpm_jax.models import Classifier, HPMHead, head_modes
from hpm_jax.models.export import MODEL_SPEC, load_model
from hpm_jax.runtime.sharding import make_mesh, replicated

PROG = "python -m hpm_jax.analysis"


def resolve_checkpoint(directory: str) -> str:
    """The model directory: DIR itself, DIR/model, or the checkpoint DIR/summary.json names."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"--checkpoint={directory} does not exist. Train a model with `python -m "
            "hpm_jax.demo --config=configs/fashion_mnist.py:local --workdir=DIR` and pass DIR "
            "(or the model directory it prints), or convert one with `python -m hpm_jax.convert`."
        )
    if os.path.isfile(os.path.join(directory, MODEL_SPEC)):
        return directory
    if os.path.isfile(os.path.join(directory, "model", MODEL_SPEC)):
        return os.path.join(directory, "model")
    summary = os.path.join(directory, "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            named = json.load(f).get("checkpoint")
        if named and os.path.isfile(os.path.join(named, MODEL_SPEC)):
            return named
    raise FileNotFoundError(
        f"--checkpoint={directory} holds no {MODEL_SPEC}, no model/{MODEL_SPEC} and no "
        "summary.json naming a checkpoint; pass the model directory that "
        "`python -m hpm_jax.demo` or `python -m hpm_jax.convert` wrote."
    )


def _first(source: data.Source, n: int, split: str) -> data.Source:
    if n > len(source):
        raise ValueError(f"--num_examples={n} but the {split} split has {len(source)} examples.")
    return source if n == len(source) else data.FirstRecords(source, n)


def with_prototypes(
    model: Classifier,
    variables: Any,
    *,
    dataset: str,
    split: str,
    num_examples: int,
    mesh: Mesh,
    batch_size: int,
    data_dir: str | None,
) -> tuple[Classifier, Any]:
    """An FC model as an HPM model: FC weights kept, P_ema = class means of training images."""
    from hpm_jax.models import prototypes  # only FC checkpoints need it

    hpm = model.clone(head=HPMHead(model.head.num_classes))  # default knobs, s = 1
    variables = prototypes.with_head(variables, hpm)
    source = data.get_source(dataset, split, data_dir=data_dir)
    source = data.FirstRecords(source, num_examples)
    batches = data.eval_iterator(source, batch_size=batch_size, mesh=mesh)
    return hpm, prototypes.init_prototypes(hpm, variables, batches)


def run(
    checkpoint: str,
    out: str,
    *,
    dataset: str = "fashion_mnist",
    split: str = "test",
    num_examples: int = 1000,
    batch_size: int = 250,
    heads: tuple[str, ...] = (),
    relative_radii: tuple[float, ...] = sensitivity.DEFAULT_RELATIVE_RADII,
    num_draws: int = 4,
    num_steps: int = 10,
    context: str = "joint",
    train_split: str = "train",
    prototype_examples: int = 10000,
    data_dir: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole analysis (see the module docstring); returns `analyze`'s result."""
    start = time.perf_counter()
    directory = resolve_checkpoint(checkpoint)
    mesh = make_mesh()
    n = mesh.devices.size
    if num_examples % batch_size or batch_size % n:
        raise ValueError(
            f"--num_examples={num_examples} must be a multiple of --batch_size={batch_size}, and "
            f"the batch size a multiple of the {n} devices: every batch is full, so that HPM's "
            "batch statistics hold no padding."
        )
    model, variables = load_model(directory)
    # Replicated over the mesh the batches are sharded over: load_model leaves them on one
    # device, which jit refuses beside batches on several ("incompatible devices").
    variables = jax.device_put(variables, replicated(mesh))
    info = data.dataset_info(dataset)
    if info.image_shape[-1] != model.backbone.in_channels or (
        info.num_classes != model.head.num_classes
    ):
        raise ValueError(
            f"--dataset={dataset} ({info.num_classes} classes, images {info.image_shape}) does "
            f"not fit the checkpoint's model ({model.head.num_classes} classes, "
            f"{model.backbone.in_channels} channels); pass the dataset it was trained on."
        )
    if head_modes(model) == ("fc",) and set(heads or ("l2",)) - {"fc"}:
        model, variables = with_prototypes(
            model, variables, dataset=dataset, split=train_split, mesh=mesh,
            num_examples=prototype_examples, batch_size=max(batch_size, n), data_dir=data_dir,
        )  # fmt: skip
    chosen = sensitivity.model_heads(model)
    if heads:
        unknown = sorted(set(heads) - {h.name for h in chosen})
        if unknown:
            raise ValueError(f"--heads: {unknown} not among {[h.name for h in chosen]}.")
        chosen = tuple(h for h in chosen if h.name in heads)

    source = _first(data.get_source(dataset, split, data_dir=data_dir), num_examples, split)
    batches = data.eval_iterator(source, batch_size=batch_size, mesh=mesh)
    result = sensitivity.analyze(
        model, variables, batches, heads=chosen, relative_radii=relative_radii,
        context=context, num_draws=num_draws, num_steps=num_steps, seed=seed,
    )  # fmt: skip
    summary = result["summary"]
    summary.update(checkpoint=directory, dataset=dataset, split=split, batch_size=batch_size,
                   seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    np.savez_compressed(
        os.path.join(out, "per_sample.npz"),
        **{f"{h}/{k}": v for h, q in result["per_sample"].items() for k, v in q.items()},
    )
    plots.write_figures(result, out)
    return result


def report(summary: dict[str, Any]) -> str:
    """A few lines per head: accuracy, medians, flip rates at each radius."""
    radii = ", ".join(f"{r:g}" for r in summary["relative_radii"])
    lines = [f"flip rates at radii {radii} x mean ||f|| ({summary['mean_feature_norm']:.3g})"]
    for name, h in summary["heads"].items():
        scale = f"  s={h['logit_scale']:.3g}" if h.get("logit_scale") is not None else ""
        lines += [
            f"{name:>4}: acc {h['accuracy']:.3f}  median ||grad m|| {h['lipschitz']['median']:.3g}"
            f"{scale}  median relative sensitivity {h['relative_sensitivity']['median']:.3g}"
            f"  median input distance {h['input_distance']['median']:.3g}",
            "      worst case " + " ".join(f"{v:.3f}" for v in h["worst_case"]["flip_rate"]),
            "      random     " + " ".join(f"{v:.3f}" for v in h["random"]["flip_rate"]),
        ]
    return "\n".join(lines)
