"""hpm-jax: Hybrid Prototype Mixing heads and honest evaluation of dynamic defenses in JAX.

from hpm_jax.models import get_model
model = get_model("resnet18", num_classes=10)
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
logits = model.apply(variables, images)          # images: float32 NHWC in [0, 1]
"""

__version__ = "0.1.0"
