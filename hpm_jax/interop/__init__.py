"""Models from elsewhere: PyTorch / RobustBench checkpoint import and the RobustBench zoo.

    from hpm_jax.interop.convert import load_state_dict, torch_to_flax
    from hpm_jax.interop.zoo import MODELS, load_robustbench

Subpackages: `convert` (PyTorch state dicts to Flax variables, exact to 1e-4; the program is
`hpm_jax.cli.convert`), `zoo` (105 RobustBench leaderboard models by name, downloaded and
converted on demand).
"""
