"""Checkpoint import: AutoAttack's pretrained ResNet-18 against PyTorch, RobustBench
conventions, mismatch reports, safe loading, and the Orbax round trip of the command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from real_images import photo_crops
from torch_reference import pyautoattack_example, pyautoattack_example_path, torch

from hpm_jax.cli.convert import main as convert_main
from hpm_jax.cli.convert import parse_kwargs
from hpm_jax.interop.convert import CheckpointMismatchError, load_state_dict, torch_to_flax
from hpm_jax.models import get_model
from hpm_jax.models.export import load_model


@pytest.fixture(scope="module")
def pretrained():
    """AutoAttack's pretrained CIFAR-10 ResNet-18: the torch model and its state dict file."""
    path = pyautoattack_example_path("model_test.pt")
    net = pyautoattack_example("resnet").ResNet18()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval(), path


def torch_logits(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def test_pretrained_resnet18_matches_pytorch_on_real_images(pretrained):
    net, path = pretrained
    variables = torch_to_flax("resnet18", load_state_dict(path))
    model = get_model("resnet18", num_classes=10)
    x = photo_crops(16)
    ours = np.asarray(jax.jit(model.apply)(variables, x))
    theirs = torch_logits(net, x)
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_robustbench_wrappers_and_prefixes_convert_the_same(pretrained):
    _, path = pretrained
    plain = load_state_dict(path)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in plain.items()}, "epoch": 99}
    a = torch_to_flax("resnet18", plain)
    b = torch_to_flax("resnet18", wrapped)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(pretrained):
    _, path = pretrained
    state = load_state_dict(path)
    del state["layer1.0.conv1.weight"]
    state["extra_block.weight"] = np.zeros((3, 3), np.float32)
    state["layer2.0.conv2.weight"] = np.zeros((64, 128, 3, 3), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        torch_to_flax("resnet18", state)
    err = info.value
    assert err.missing == ["params/backbone/layer1_0/conv1/kernel"]
    assert err.unexpected == ["extra_block.weight"]
    assert list(err.misshaped) == ["layer2.0.conv2.weight"]
    for text in ("layer1_0/conv1/kernel", "extra_block.weight", "(64, 128, 3, 3)"):
        assert text in str(err)


def test_wrong_architecture_is_reported_not_crashed(pretrained):
    _, path = pretrained
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        torch_to_flax("small_cnn", load_state_dict(path))


def test_full_pickles_are_refused_and_safetensors_load(tmp_path, pretrained):
    net, path = pretrained
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: arbitrary unpickling
    with pytest.raises(ValueError, match="weights-only"):
        load_state_dict(pickled)

    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, st)
    a, b = load_state_dict(st), load_state_dict(path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_command_line_writes_an_orbax_checkpoint_that_loads(tmp_path, pretrained):
    net, path = pretrained
    out = os.fspath(tmp_path / "rn18")
    convert_main(["--arch", "resnet18", "--checkpoint", path, "--out", out])
    model, variables = load_model(out)
    x = photo_crops(4, seed=1)
    np.testing.assert_allclose(
        np.asarray(model.apply(variables, x)), torch_logits(net, x), rtol=1e-4, atol=1e-3
    )
    with pytest.raises(FileExistsError):  # never overwrite a finished conversion
        convert_main(["--arch", "resnet18", "--checkpoint", path, "--out", out])


def test_parse_kwargs():
    assert parse_kwargs("depth=28,width=10") == {"depth": 28, "width": 10}
    assert parse_kwargs("mean=(0.5, 0.5, 0.5)") == {"mean": [0.5, 0.5, 0.5]}
    assert parse_kwargs("") == {}
    with pytest.raises(ValueError, match="depth=28"):
        parse_kwargs("depth 28")


def test_a_checkpoint_of_another_architecture_is_reported_not_crashed(tmp_path, pretrained):
    _, path = pretrained
    out = os.fspath(tmp_path / "rn18")
    convert_main(["--arch", "resnet18", "--checkpoint", path, "--out", out])
    spec = {"arch": "small_cnn", "kwargs": {"num_classes": 10, "in_channels": 3, "image_size": 32}}
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump(spec, f)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(out)
    assert "params/backbone/fc1/kernel" in info.value.missing
    assert "params/backbone/layer1_0/conv1/kernel" in info.value.unexpected
    assert "params/backbone/conv1/kernel" in info.value.misshaped
    assert "model.json describes another model" in str(info.value)


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hpm_jax.convert", "--arch", "resnet18",
         "--checkpoint", os.fspath(tmp_path / "nope.pt"), "--out", os.fspath(tmp_path / "o")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2  # hpm_jax.cli.EXIT_USER_ERROR, as argparse's usage errors
    assert result.stderr.strip() == (
        f"hpm-convert: error: No checkpoint file at {str(tmp_path / 'nope.pt')!r}."
    )
