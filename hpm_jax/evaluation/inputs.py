"""What an evaluation evaluates: the model directory, and the images it is evaluated on.

    model, variables, directory = load_model_dir("/tmp/fmnist_hpm/model", "checkpoint")
    x, y, described = load_eval_subset(config, 1000)        # config.dataset's eval split
    check_model_takes(model, variables, x, y, directory)    # else EvaluationSetupError

The images are the first N of the eval split (or of an .npz of x and y, or RobustBench's
subset and order), float32 NHWC in [0, 1]; every mismatch with the model (layout, range,
shape, labels) is an `EvaluationSetupError` naming the fix, raised before anything is written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from hpm_jax import data
from hpm_jax.data import arrays
from hpm_jax.models.export import MODEL_SPEC, load_model


class EvaluationSetupError(ValueError):
    """The checkpoint, data or evaluation config cannot give the evaluation asked for."""


def load_model_dir(directory: str, flag: str) -> tuple[Any, Any, str]:
    """(model, variables, absolute directory) of a model directory; `flag` names it in errors."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isfile(os.path.join(directory, MODEL_SPEC)):
        nested = os.path.join(directory, "model", MODEL_SPEC)
        hint = (
            f" It holds model/{MODEL_SPEC}: pass {os.path.join(directory, 'model')}."
            if os.path.isfile(nested)
            else " Train one with `python -m hpm_jax.train --config=configs/fashion_mnist.py "
            "--workdir=DIR` (then pass DIR/model) or convert one with `python -m hpm_jax.convert`."
        )
        raise EvaluationSetupError(
            f"--{flag}={directory} is not a model directory (no {MODEL_SPEC}).{hint}"
        )
    model, variables = load_model(directory)  # on one device: the attacks place them
    return model, variables, directory


def load_eval_data(config: ml_collections.ConfigDict, num_examples: int, data_file: str = "",
                   order: str = "source"):  # fmt: skip
    """(x float32 NHWC in [0, 1], y int32): the first `num_examples` of the eval split, or of
    the arrays in `data_file` (an .npz of x and y, checked by `data.arrays`). `order`
    "robustbench" takes RobustBench's subset and order of the split
    (`hpm_jax.evaluation.robustbench`)."""
    x, y, _ = load_eval_subset(config, num_examples, data_file, order)
    return x, y


def load_eval_subset(config: ml_collections.ConfigDict, num_examples: int, data_file: str = "",
                     order: str = "source"):  # fmt: skip
    """`load_eval_data`'s arrays and a sentence naming the images and their order."""
    from hpm_jax.evaluation import robustbench as rb_eval

    if order not in rb_eval.ORDERS:
        raise EvaluationSetupError(f"evaluation.order={order!r} is not one of {rb_eval.ORDERS}.")
    if data_file:
        try:
            x, y = arrays.load_npz(os.path.expanduser(data_file))
        except arrays.ArrayDataError as e:
            raise EvaluationSetupError(f"evaluation.data_file: {e}") from None
        n = len(x) if not num_examples else int(num_examples)
        if n > len(x):
            raise EvaluationSetupError(
                f"evaluation.num_examples={n} but {data_file} has {len(x)} images."
            )
        return x[:n], y[:n], f"the first {n} of {data_file}, in its order"
    ds = config.dataset
    source = data.get_source(ds.name, ds.eval_split, data_dir=ds.data_dir or None)
    n = len(source) if not num_examples else int(num_examples)
    if n > len(source):
        raise EvaluationSetupError(
            f"evaluation.num_examples={n} but {ds.name}:{ds.eval_split} has {len(source)}."
        )
    preprocess = data.eval_preprocessing("auto", getattr(source, "name", ds.name))
    indices, described = np.arange(n), f"the first {n} of {ds.eval_split}, in order"
    if order == "robustbench":
        try:
            indices, described = rb_eval.robustbench_indices(source, ds.name, n)
        except rb_eval.SubsetError as e:
            raise EvaluationSetupError(f"evaluation.order=robustbench: {e}") from None
        described = f"{described} ({ds.name}:{ds.eval_split})"
    records = [source[int(i)] for i in indices]
    x = np.stack([preprocess(np.asarray(r["image"])) for r in records])
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([int(r["label"]) for r in records], np.int32)
    return (x.astype(np.float32) / 255.0), y, described


def check_model_takes(model: Any, variables: Any, x: np.ndarray, y: np.ndarray, where: str):
    """The images and labels fit the model: NHWC in [0, 1], the model's input shape, labels
    below its number of classes (else EvaluationSetupError naming the fix)."""
    try:
        arrays.check_images(x, y)  # layout and range first: they explain a shape error
    except arrays.ArrayDataError as e:
        raise EvaluationSetupError(f"{e} (model: {where})") from None
    try:
        out = jax.eval_shape(lambda v, b: model.apply(v, b), variables, x[:1])
    except Exception as e:  # Flax raises many kinds of errors for a wrong input shape
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvaluationSetupError(
            f"the model in {where} cannot take images of shape {x.shape[1:]} ({first[:200]}); "
            "evaluate it on the dataset it was trained on (config.dataset)."
        ) from None
    try:
        arrays.check_images(x, y, num_classes=int(out.shape[-1]))
    except arrays.ArrayDataError as e:
        raise EvaluationSetupError(f"{e} (model: {where})") from None


def model_identity(directory: str, variables: Any, spec: dict | None = None) -> dict[str, Any]:
    """model.json (or `spec`) and a sha256 of the weights: a checkpoint rewritten in place is
    another."""
    import hashlib

    if spec is None:
        with open(os.path.join(directory, MODEL_SPEC)) as f:
            spec = json.load(f)
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(variables):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return {"spec": spec, "variables_sha256": h.hexdigest()}


def load_robustbench_for_evaluation(
    name: str,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str = "./models",
    download: bool = True,
):
    """(model, variables, label, table entry, model spec) of a RobustBench model by name
    (`hpm_jax.interop.zoo.load_robustbench` returns the first two)."""
    from hpm_jax.interop import zoo

    try:
        info = zoo.entry(name, dataset, threat_model)
    except ValueError as e:  # an unknown name, with the close ones
        raise EvaluationSetupError(f"--robustbench: {e}") from None
    model, variables = zoo.load_robustbench(
        name,
        dataset=dataset,
        threat_model=threat_model,
        model_dir=model_dir,
        download_missing=download,
    )
    path = zoo.checkpoint_path(info, model_dir)
    spec = {"robustbench": info.name, "dataset": info.dataset, "threat_model": info.threat_model,
            "arch": info.arch, "kwargs": zoo.robustbench.model_kwargs(info),
            "file": path}  # fmt: skip
    label = f"robustbench:{info.dataset}/{info.threat_model}/{info.name}"
    return model, variables, label, info, spec
