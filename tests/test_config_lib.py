"""Config files: plain values, `:arg` variants and dotted overrides."""

import glob
import os

import ml_collections
import pytest

from hpm_jax import config_lib

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "local"])
def test_every_config_is_plain_and_loads(path, arg):
    config = config_lib.load_config(path if arg is None else f"{path}:{arg}")
    assert isinstance(config, ml_collections.ConfigDict)


def test_overrides_are_typed_and_checked(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.train = ml_collections.ConfigDict({'lr': 0.1, 'steps': 10 if arg else 100})\n"
        "    c.dataset = 'mnist'\n"
        "    return c\n"
    )
    config = config_lib.load_config(f"{path}:local", ["train.lr=1", "--config.dataset=cifar10"])
    assert config.train.steps == 10
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.dataset == "cifar10"
    with pytest.raises(KeyError, match=r"train\.lrr"):
        config_lib.apply_overrides(config, ["train.lrr=3"])
    with pytest.raises(ValueError, match=r"train\.lr=0\.1"):
        config_lib.apply_overrides(config, ["train.lr"])


def test_objects_in_configs_are_refused():
    config = ml_collections.ConfigDict({"fn": print})
    with pytest.raises(TypeError, match="fn"):
        config_lib.check_plain(config)
