"""Reference PyTorch code for parity tests: RobustBench architecture files and AutoAttack's
example model, loaded by path (RobustBench's package `__init__` needs torchvision, which has
no CPU wheel here, so its files are imported one by one).

    wrn = robustbench_architecture("wide_resnet").WideResNet(depth=28, widen_factor=10)
    ResNet18 = pyautoattack_example("resnet").ResNet18
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import pytest

torch = pytest.importorskip("torch", reason="parity tests need the torch extra: launch/test.sh")


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed; launch/test.sh installs it (pip --no-deps {name})")
    return next(iter(spec.submodule_search_locations))


def _load_file(path: str, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def robustbench_architecture(file_stem: str) -> ModuleType:
    """robustbench/model_zoo/architectures/<file_stem>.py as a standalone module."""
    path = os.path.join(
        _package_dir("robustbench"), "model_zoo", "architectures", f"{file_stem}.py"
    )
    return _load_file(path, f"robustbench_arch_{file_stem}")


def pyautoattack_example(file_stem: str) -> ModuleType:
    """pyautoattack/examples/<file_stem>.py as a standalone module."""
    return _load_file(pyautoattack_example_path(f"{file_stem}.py"), f"aa_example_{file_stem}")


def pyautoattack_example_path(filename: str) -> str:
    """Path of a file shipped in pyautoattack's examples (e.g. the `model_test.pt` weights)."""
    return os.path.join(_package_dir("pyautoattack"), "examples", filename)


def randomize_batch_norm(model) -> None:
    """Affine parameters and running statistics far from their init (1, 0, 0, 1), so a
    conversion that drops or swaps them shows in the logits."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c))
                module.bias.copy_(0.2 * torch.randn(c))
                module.running_mean.copy_(0.2 * torch.randn(c))
                module.running_var.copy_(0.5 + torch.rand(c))
