"""Import PyTorch / RobustBench checkpoints as Flax variables.

    from hpm_jax.interop.convert import load_state_dict, torch_to_flax
    variables = torch_to_flax("resnet18", load_state_dict("model_test.pt"))

or from the shell, writing an Orbax checkpoint that `hpm_jax.models.export` restores:

    python -m hpm_jax.convert --arch wide_resnet --checkpoint ckpt.pt --out /tmp/wrn \
        --arch_kwargs depth=28,width=10
"""

from hpm_jax.interop.convert.core import (
    NORMALIZATION,
    RENAMES,
    CheckpointMismatchError,
    torch_to_flax,
    unwrap_state_dict,
)
from hpm_jax.interop.convert.torch_io import load_state_dict

__all__ = [
    "NORMALIZATION",
    "RENAMES",
    "CheckpointMismatchError",
    "load_state_dict",
    "torch_to_flax",
    "unwrap_state_dict",
]
