"""The end-to-end demo: Fashion-MNIST (offline) -> sharded training -> evaluation -> Orbax.

    python -m hpm_jax.demo --config=configs/fashion_mnist.py --workdir=/tmp/hpm_demo

Trains the configured backbone with plain cross-entropy, data-parallel over every local
device, evaluates on the held-out split with the masked last batch, writes an Orbax model
checkpoint and `summary.json` to the workdir, reloads the checkpoint and checks that it
predicts the same. Later stages (adversarial training, HPM, AutoAttack, MSA) extend it.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging

from hpm_jax import config_lib, data
from hpm_jax.checkpointing import load_model, save_model
from hpm_jax.models import Classifier, get_model
from hpm_jax.sharding import make_mesh, replicated

_CONFIG = config_lib.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/hpm_demo", "Where the checkpoint and summary go.")


def train_step(model: Classifier, optimizer, state: dict[str, Any], batch: dict[str, jax.Array]):
    """One SGD step on the mean cross-entropy; returns the new state and the loss."""

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state["batch_stats"]},
            batch["image"], train=True, mutable=["batch_stats"],
        )  # fmt: skip
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss


def correct_count(model: Classifier, variables: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Number of correctly classified real (unmasked) examples in an evaluation batch."""
    predictions = jnp.argmax(model.apply(variables, batch["image"]), axis=-1)
    return jnp.sum((predictions == batch["label"]) & batch["mask"])


def evaluate(model: Classifier, variables: Any, source, config, mesh) -> float:
    count = jax.jit(functools.partial(correct_count, model))
    batches = data.eval_iterator(source, batch_size=config.eval.batch_size, mesh=mesh)
    return float(sum(count(variables, batch) for batch in batches)) / len(source)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    mesh = make_mesh()
    data_dir = config.dataset.data_dir or None
    train_source = data.get_source(
        config.dataset.name, config.dataset.train_split, data_dir=data_dir
    )
    eval_source = data.get_source(config.dataset.name, config.dataset.eval_split, data_dir=data_dir)
    model_kwargs = {"num_classes": config.model.num_classes, **config.model.kwargs}
    model = get_model(config.model.name, **model_kwargs)

    info = data.dataset_info(config.dataset.name)
    variables = model.init(jax.random.key(config.seed), jnp.zeros((1, *info.image_shape)))
    schedule = optax.cosine_decay_schedule(config.train.learning_rate, config.train.num_steps)
    optimizer = optax.chain(
        optax.add_decayed_weights(config.train.weight_decay),
        optax.sgd(schedule, momentum=config.train.momentum, nesterov=True),
    )
    state = {**variables, "opt_state": optimizer.init(variables["params"])}
    state = jax.device_put(state, replicated(mesh))
    step_fn = jax.jit(functools.partial(train_step, model, optimizer), donate_argnums=0)

    batches = data.train_iterator(
        train_source, batch_size=config.train.batch_size, mesh=mesh, seed=config.seed
    )
    start = time.perf_counter()
    for step, batch in zip(range(1, config.train.num_steps + 1), batches, strict=False):
        state, loss = step_fn(state, batch)
        if step % config.train.log_every_steps == 0 or step == config.train.num_steps:
            rate = step * config.train.batch_size / (time.perf_counter() - start)
            print(f"step {step}/{config.train.num_steps}  loss {float(loss):.4f}  "
                  f"{rate:.0f} images/s", flush=True)  # fmt: skip
    train_seconds = time.perf_counter() - start

    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    accuracy = evaluate(model, variables, eval_source, config, mesh)
    checkpoint = save_model(
        os.path.join(workdir, f"model_{int(time.time())}"), variables,
        arch=config.model.name, **model_kwargs,
    )  # fmt: skip
    reloaded_model, reloaded = load_model(checkpoint)
    reloaded_accuracy = evaluate(reloaded_model, reloaded, eval_source, config, mesh)
    if reloaded_accuracy != accuracy:
        raise RuntimeError(f"Reloaded checkpoint disagrees: {reloaded_accuracy} != {accuracy}.")

    summary = {
        "dataset": config.dataset.name,
        "model": config.model.name,
        "devices": jax.device_count(),
        "train_steps": config.train.num_steps,
        "train_seconds": round(train_seconds, 1),
        "clean_accuracy": accuracy,
        "checkpoint": checkpoint,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO.
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    summary = run(_CONFIG.value, workdir)
    print(f"\n{summary['model']} on {summary['dataset']} ({summary['devices']} devices, "
          f"{summary['train_steps']} steps, {summary['train_seconds']} s)")  # fmt: skip
    print(f"  clean test accuracy: {summary['clean_accuracy']:.4f}")
    print(f"  checkpoint: {summary['checkpoint']}  (reloaded and re-checked)")
    print(f"  summary: {os.path.join(workdir, 'summary.json')}")


if __name__ == "__main__":
    app.run(main)
