"""RobustBench models by name (`hpm_jax.interop.zoo`), offline.

Checkpoints are written with random weights from RobustBench's own architecture files, saved
the way RobustBench's downloads are ({"state_dict": {"module." + key: tensor}} for
Carmon2019Unlabeled, {"last": ..., "best": ...} for Andriushchenko2020Understanding), placed in
RobustBench's cache layout, loaded by name and compared with the PyTorch model.
"""

from __future__ import annotations

import os
import re
import socket
import time

import jax
import numpy as np
import pytest

from hpm_jax.cli.convert import main as convert_main
from hpm_jax.interop import zoo
from hpm_jax.interop.zoo import download
from hpm_jax.interop.zoo.robustbench_table import MODELS
from hpm_jax.models import get_model


@pytest.fixture(scope="module")
def ref():
    import torch_reference

    torch_reference.torch.manual_seed(0)
    return torch_reference


def _place(torch, obj, model_dir, dataset: str, threat_model: str, name: str) -> str:
    path = os.path.join(model_dir, dataset, threat_model, f"{name}.pt")
    os.makedirs(os.path.dirname(path))
    torch.save(obj, path)
    return path


def _compare(ref, torch_model, model, variables, n: int = 2) -> None:
    """Logits agree within float32 error.

    Both sides compute in float32 with different summation orders. Each conv output sums
    K = 9 * C_in <= 5760 products, so its rounding error is ~ sqrt(K) * 2^-24 ~ 5e-6 of
    its scale, and the ~30 layers of a WRN-28-10 add such errors: ~30 * 5e-6 = 1.5e-4 of
    the logits' scale in the worst case, 2e-5 typically (errors of independent sign).
    A bound of 2e-4 of the scale is therefore above the float32 noise (measured on
    Carmon2019Unlabeled: 7e-7), and far below what a wrong weight layout, padding or
    normalisation gives (measured: 0.25 for a normalisation that the model lacks).
    """
    torch = ref.torch
    x = np.random.default_rng(0).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
    torch_model.eval()
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, x))
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)


# ---------------------------------------------------------------------------------------------
# The table.


def test_every_entry_builds_a_model():
    """Each entry's architecture and options are accepted by the registry."""
    for (dataset, threat_model, name), info in MODELS.items():
        assert (info.dataset, info.threat_model, info.name) == (dataset, threat_model, name)
        model = get_model(info.arch, **zoo.robustbench.model_kwargs(info))
        assert model.head.num_classes == {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
        assert 0 <= info.robust_acc <= info.clean_acc <= 100, name
    assert len(MODELS) >= 100


def test_table_names_and_sources_match_the_robustbench_wheel(ref):
    """Names and Drive ids as in robustbench/model_zoo/*.py (read as text: the package's
    imports need timm and torchvision)."""
    root = os.path.dirname(os.path.dirname(ref.robustbench_architecture("resnet").__file__))
    sections = {"linf": "Linf", "l2": "L2"}
    ids = {}
    for dataset in ("cifar10", "cifar100", "imagenet"):
        with open(os.path.join(root, f"{dataset}.py")) as f:
            parts = re.split(r"\n(\w+) = OrderedDict\(", f.read())
        for section, body in zip(parts[1::2], parts[2::2], strict=True):
            for name, fields in re.findall(r"\('([\w\-]+)', \{(.*?)\}\)", body, re.S):
                gdrive = re.search(r"'gdrive_id':\s*['\"]([^'\"]*)['\"]", fields)
                ids[dataset, sections.get(section, section), name] = gdrive and gdrive.group(1)
    for key, info in MODELS.items():
        assert key in ids, key
        if not info.source.startswith("https://"):
            assert ids[key] == info.source, key


def test_unknown_names_list_close_ones():
    with pytest.raises(ValueError, match=r"Close names: \['Carmon2019Unlabeled'\]"):
        zoo.entry("Carmon2019Unlabelled")
    with pytest.raises(ValueError, match=r"listed for \['cifar10/Linf'\]"):
        zoo.entry("Carmon2019Unlabeled", dataset="cifar100")
    assert zoo.entry("Standard", threat_model="l2").threat_model == "L2"


# ---------------------------------------------------------------------------------------------
# Loading by name.


def test_carmon2019_loads_by_name_and_matches_robustbench(ref, tmp_path):
    """The real entry: RobustBench's WideResNet-28-10 with sub_block1, as its download is."""
    torch = ref.torch
    torch_model = ref.robustbench_architecture("wide_resnet").WideResNet(
        depth=28, widen_factor=10, sub_block1=True
    )
    ref.randomize_batch_norm(torch_model)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in torch_model.state_dict().items()}}
    path = _place(torch, wrapped, tmp_path, "cifar10", "Linf", "Carmon2019Unlabeled")

    assert zoo.checkpoint_path(zoo.entry("Carmon2019Unlabeled"), tmp_path) == path
    model, variables = zoo.load_robustbench("Carmon2019Unlabeled", model_dir=tmp_path)
    assert (model.backbone.depth, model.backbone.width, model.head.num_classes) == (28, 10, 10)
    _compare(ref, torch_model, model, variables)


def test_nested_checkpoint_and_hpm_convert_by_name(ref, tmp_path):
    """Andriushchenko2020Understanding's file holds {"last", "best"}; hpm-convert --robustbench
    writes the model directory that load_model restores."""
    from hpm_jax.models.export import load_model

    torch = ref.torch
    arch = ref.robustbench_architecture("resnet")
    torch_model = arch.PreActResNet(arch.PreActBlock, [2, 2, 2, 2])
    ref.randomize_batch_norm(torch_model)
    # "best" differs from "last", so reading the wrong one fails the comparison.
    best = {k: torch.zeros_like(v) for k, v in torch_model.state_dict().items()}
    checkpoint = {"last": torch_model.state_dict(), "best": best}
    name = "Andriushchenko2020Understanding"
    _place(torch, checkpoint, tmp_path, "cifar10", "Linf", name)

    model, variables = zoo.load_robustbench(name, model_dir=tmp_path, threat_model="linf")
    _compare(ref, torch_model, model, variables)

    out = convert_main(
        ["--robustbench", name, "--model_dir", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    loaded_model, loaded = load_model(out)
    assert loaded_model == model
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), jax.device_get(variables))


# ---------------------------------------------------------------------------------------------
# Without network.


def test_missing_checkpoint_without_network_fails_fast_naming_the_path(tmp_path, monkeypatch):
    # TEST-NET-1 (RFC 5737) is never routed: the connect times out or is refused at once,
    # as on a machine without network, and nothing is downloaded where there is one.
    monkeypatch.setattr(download, "GDRIVE_URL", "https://192.0.2.1/{id}")
    expected = os.path.join(tmp_path, "cifar10", "Linf", "Carmon2019Unlabeled.pt")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        zoo.load_robustbench("Carmon2019Unlabeled", model_dir=tmp_path)
    assert time.monotonic() - start < 10
    assert f"place it at exactly {expected}" in str(info.value)
    assert "drive.google.com/uc?id=15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ" in str(info.value)
    assert not os.path.exists(expected)

    with pytest.raises(zoo.CheckpointUnavailableError, match="downloads are off"):
        zoo.load_robustbench("Carmon2019Unlabeled", model_dir=tmp_path, download_missing=False)


def test_network_probe_is_bounded_when_dns_hangs(monkeypatch):
    """A DNS lookup ignores socket timeouts; the probe must not wait for it."""

    def hanging_lookup(*args, **kwargs):
        time.sleep(30)  # then fail as a real lookup does (the probe thread is still alive)
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    assert not download.reachable("example.invalid", timeout=1.0)
    assert time.monotonic() - start < 3
