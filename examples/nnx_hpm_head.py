"""The Linen HPMHead in a Flax NNX model, through `nnx.bridge.ToNNX`.

    python examples/nnx_hpm_head.py                   # one training step on random data

    model = NNXClassifier(in_dim=32, num_features=16, num_classes=10, rngs=nnx.Rngs(0))
    logits = model(x)                                                 # HPM logits, eval mode
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    loss, out = train_step(model, optimizer, x, y)   # updates params and the EMA prototypes

`ToNNX` turns each Linen collection into NNX variables of the type registered for its name:
params become `nnx.Param` (trained by the optimizer); the `prototypes` collection (`ema`,
`seen`) becomes `Prototypes` variables, changed only by the head's EMA update. Calling the
head with `mutable=["prototypes"]` writes that update back into the NNX module, so the model
is the whole state, as NNX expects. `linen_variables(model.head)` gives the Linen variables,
e.g. to save with `hpm_jax.models.export.save_model` or to apply the Linen head directly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import variablelib

from hpm_jax.models import PROTOTYPES, HPMHead


class Prototypes(nnx.Variable):
    """HPM's EMA prototypes: model state the optimizer does not train (wrt=nnx.Param)."""


def _prototype_type() -> type[nnx.Variable]:
    # The bridge maps the Linen collection name to an NNX type through this registry. If the
    # name was registered first (e.g. by the bridge itself), reuse that type.
    try:
        return nnx.register_variable_name(PROTOTYPES, Prototypes)
    except ValueError:
        return variablelib.variable_type_from_name(PROTOTYPES)


PrototypeVariable = _prototype_type()


class NNXClassifier(nnx.Module):
    """A small NNX backbone (Linear + ReLU) and the Linen HPMHead wrapped for NNX."""

    def __init__(
        self, in_dim: int, num_features: int, num_classes: int, *, rngs: nnx.Rngs, **head_kwargs
    ):
        self.backbone = nnx.Linear(in_dim, num_features, rngs=rngs)
        head = HPMHead(num_classes, **head_kwargs)
        # lazy_init runs the Linen init on sample features, creating every variable.
        self.head = nnx.bridge.ToNNX(head, rngs=rngs).lazy_init(jnp.zeros((1, num_features)))

    def features(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.backbone(x))

    def __call__(
        self,
        x: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
        mode: Any = "hpm",
    ) -> Any:
        mutable = [PROTOTYPES] if train else False  # the EMA update happens in training only
        return self.head(self.features(x), labels, train=train, mode=mode, mutable=mutable)


def linen_variables(head: nnx.Module) -> dict[str, Any]:
    """The Linen variables {"params", "prototypes"} held by a ToNNX-wrapped head."""
    return {
        "params": nnx.to_pure_dict(nnx.state(head, nnx.Param)),
        PROTOTYPES: nnx.to_pure_dict(nnx.state(head, PrototypeVariable)),
    }


@nnx.jit
def train_step(
    model: NNXClassifier, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One step of CE on the HPM logits + CE on the FC logits; prototypes EMA-updated once."""

    def loss_fn(model: NNXClassifier):
        out = model(x, y, train=True, mode=("hpm", "fc"))
        ce = optax.softmax_cross_entropy_with_integer_labels
        return ce(out["hpm"], y).mean() + ce(out["fc"], y).mean(), out

    # Gradients wrt nnx.Param only; the prototype update inside loss_fn is kept as state.
    (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, out


def main(steps: int = 1, seed: int = 0) -> dict[str, Any]:
    """Train `steps` steps on random data; returns the model, optimizer, data and losses."""
    in_dim, num_classes, batch = 32, 5, 20
    key_x, key_y = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(key_x, (batch, in_dim))
    y = jax.random.randint(key_y, (batch,), 0, num_classes)
    model = NNXClassifier(in_dim, 16, num_classes, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    losses = []
    for step in range(steps):
        loss, _ = train_step(model, optimizer, x, y)
        losses.append(float(loss))
        print(f"step {step + 1}: loss {losses[-1]:.4f}")
    seen = model.head.seen.get_value()
    print(f"prototypes seen per class: {seen.tolist()}")
    return {"model": model, "optimizer": optimizer, "x": x, "y": y, "losses": losses}


if __name__ == "__main__":
    main()
