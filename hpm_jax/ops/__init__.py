"""Custom-gradient operations.

from hpm_jax.ops import straight_through_onehot
a = straight_through_onehot(logits, temperature=1.0)   # argmax forward, softmax backward
"""

from hpm_jax.ops.ste import straight_through_onehot

__all__ = ["straight_through_onehot"]
