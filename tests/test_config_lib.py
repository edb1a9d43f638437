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
    with pytest.raises(ValueError, match=r"train\.learning_rate=0\.1"):
        config_lib.apply_overrides(config, ["train.lr"])


def test_objects_in_configs_are_refused():
    config = ml_collections.ConfigDict({"fn": print})
    with pytest.raises(TypeError, match="fn"):
        config_lib.check_plain(config)


def test_hyphenated_keys_sections_and_argv_overrides():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py"),
        ["evaluation.attack_options.apgd-ce.n_iter=7"],
    )
    assert config.evaluation.attack_options["apgd-ce"].n_iter == 7
    config_lib.apply_overrides(config, ["evaluation.attack_options={'square': {'n_queries': 3}}"])
    assert config.evaluation.attack_options.to_dict() == {"square": {"n_queries": 3}}
    with pytest.raises(config_lib.ConfigError, match=r"is a section; .*square"):
        config_lib.apply_overrides(config, ["evaluation.attack_options=3"])
    with pytest.raises(config_lib.ConfigError, match=r"holds a float \(0\.1\), not a str"):
        config_lib.apply_overrides(config, ["evaluation.eps=abc"])
    with pytest.raises(config_lib.ConfigError, match=r"no section 'evalution'; its keys are"):
        config_lib.apply_overrides(config, ["evalution.eps=0.1"])
    rest, overrides = config_lib.split_overrides(
        ["prog", "--config=c.py", "--config.a.b-c=1", "--workdir=w", "--config.d", "2",
         "--config.e", "--noconfig.f"]
    )  # fmt: skip
    assert rest == ["prog", "--config=c.py", "--workdir=w"]
    assert overrides == ["a.b-c=1", "d=2", "e=True", "f=False"]


def test_parse_variants_names_the_unknown_and_the_known(tmp_path):
    known = ("local", "hpm")
    assert config_lib.parse_variants(None, known) == frozenset()
    assert config_lib.parse_variants("", known) == frozenset()
    assert config_lib.parse_variants("hpm, local,", known) == {"local", "hpm"}
    with pytest.raises(ValueError, match=r"\['nope', 'zz'\] .*variants are local, hpm"):
        config_lib.parse_variants("local,zz,nope", known)
    with pytest.raises(ValueError, match=r"\['local'\] of this config; it has none"):
        config_lib.parse_variants("local", ())
    path = tmp_path / "c.py"  # load_config names the file and the variant
    path.write_text(
        "from hpm_jax import config_lib\n"
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    variants = config_lib.parse_variants(arg, ('small',))\n"
        "    return ml_collections.ConfigDict({'small': 'small' in variants})\n"
    )
    assert config_lib.load_config(f"{path}:small").small is True
    with pytest.raises(config_lib.ConfigError, match=r"c\.py:big: Unknown variant\(s\) \['big'\]"):
        config_lib.load_config(f"{path}:big")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_configs_overrides_apply_and_unknown_keys_are_named(path):
    overrides = ["seed=3", "train.num_steps=7", "train.learning_rate=1", "attack.norm=L2"]
    config = config_lib.load_config(path, overrides)
    assert (config.seed, config.train.num_steps, config.attack.norm) == (3, 7, "L2")
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    with pytest.raises(config_lib.ConfigError, match=r"config\.train has no key 'num_stepz'"):
        config_lib.load_config(path, ["train.num_stepz=7"])
    with pytest.raises(config_lib.ConfigError, match=r"num_steps holds a int \(\d+\), not a str"):
        config_lib.load_config(path, ["train.num_steps=many"])


@pytest.mark.parametrize("spelling", ["apgd-ce", "apgd_ce"])
def test_attack_keys_take_the_hyphenated_and_the_identifier_spelling(spelling):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")
    config = config_lib.load_config(path, [f"evaluation.attack_options.{spelling}.n_iter=7"])
    assert config.evaluation.attack_options["apgd-ce"].n_iter == 7
    assert "apgd_ce" not in config.evaluation.attack_options  # no second key
    with pytest.raises(
        config_lib.ConfigError, match=r"no section 'apgd_cee'; its keys are apgd-ce"
    ):
        config_lib.apply_overrides(config, ["evaluation.attack_options.apgd_cee.n_iter=7"])
