"""The experiment configs (configs/*.py) and the sections they share (hpm_jax.config_sections):
invariants over every file and every combination of its variants, not a frozen snapshot."""

import glob
import importlib.util
import itertools
import os

import ml_collections
import pytest

from hpm_jax import config_lib, config_sections
from hpm_jax.evaluation import evaluate
from hpm_jax.training import model_init

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))
# The section each key of a config is built by.
BUILDERS = {
    "dataset": "dataset",
    "model": "model",
    "init": "init",
    "objective": "objective",
    "attack": "attack",
    "train": "train",
    "eval": "eval_",
    "checkpoint": "checkpoint",
    "evaluation": "evaluation",
}


def _variants(path: str) -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("_config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.VARIANTS)


def _specs(path: str) -> list[str]:
    """`path`, and path:VARIANTS for every combination of the file's variants."""
    known = _variants(path)
    combos = itertools.chain.from_iterable(
        itertools.combinations(known, r) for r in range(1, len(known) + 1)
    )
    return [path, *(f"{path}:{','.join(c)}" for c in combos)]


ALL_SPECS = [spec for path in CONFIGS for spec in _specs(path)]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _name(spec: str) -> str:
    return os.path.basename(spec)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_its_variants_with_parse_variants(path):
    known = _variants(path)
    with pytest.raises(config_lib.ConfigError, match=r"Unknown variant\(s\) \['nope'\]") as info:
        config_lib.load_config(f"{path}:nope")
    assert ", ".join(known) in str(info.value)


def test_a_change_in_a_base_section_shows_in_every_config(monkeypatch):
    def marked(build):
        def wrapper(*args, **kwargs):
            section = build(*args, **kwargs)
            section.from_base = True
            return section

        return wrapper

    for builder in set(BUILDERS.values()):
        monkeypatch.setattr(config_sections, builder, marked(getattr(config_sections, builder)))
    for spec in ALL_SPECS:
        config = config_lib.load_config(spec)
        for key in BUILDERS:
            assert config[key].get("from_base") is True, (_name(spec), key)


CIFAR_ARGS = [
    ",".join(c)
    for r in range(len(config_sections.CIFAR_VARIANTS) + 1)
    for c in itertools.combinations(config_sections.CIFAR_VARIANTS, r)
]


@pytest.mark.parametrize("variants", CIFAR_ARGS)
def test_cifar100_is_cifar10_with_its_dataset_values(variants):
    def load(name):
        spec = os.path.join(CONFIG_DIR, name) + (f":{variants}" if variants else "")
        return _flat(config_lib.load_config(spec).to_dict())

    c10, c100 = load("cifar10.py"), load("cifar100.py")
    assert set(c10) == set(c100)
    differing = {k for k in c10 if c10[k] != c100[k]}
    expected = {"dataset.name", "model.num_classes", "model.head_kwargs.pseudo_count"}
    if "dm_wrn" in variants.split(","):  # the normalisation inside the DeepMind WRN
        expected |= {"model.kwargs.mean", "model.kwargs.std"}
    assert differing == expected
    assert (c100["dataset.name"], c100["model.num_classes"]) == ("cifar100", 100)


def _trains_from_scratch(name: str, variants: set[str]) -> bool:
    """fashion_mnist.py trains from scratch but for `hpm`; the others fine-tune but for `local`."""
    return "hpm" not in variants if name == "fashion_mnist.py" else "local" in variants


@pytest.mark.parametrize("spec", ALL_SPECS, ids=_name)
def test_no_default_paths_and_fine_tuning_requires_init_checkpoint(spec):
    config = config_lib.load_config(spec)
    for key, value in _flat(config.to_dict()).items():
        assert not (isinstance(value, str) and value.startswith(("/", "~"))), (key, value)
    name, _, arg = _name(spec).partition(":")
    variants = set(arg.split(",")) - {""}
    if (
        name == "fashion_mnist_study.py"
    ):  # hpm_jax.experiments.study names the missing checkpoint itself
        assert config.init.checkpoint == ""
    elif _trains_from_scratch(name, variants):
        assert config.init.checkpoint == ""
    else:  # a pretrained model the user names: an error until they do
        assert config.init.checkpoint is None
        with pytest.raises(model_init.InitCheckpointError, match=r"--config\.init\.checkpoint=DIR"):
            model_init.check_init_checkpoint(config)
        with pytest.raises(model_init.InitCheckpointError):  # before the model or data is used
            model_init.initial_variables(None, config, train_source=None, mesh=None)


def test_evaluation_section_is_the_evaluators_defaults():
    attack = config_sections.attack(norm="L2", eps=0.5, step_size=0.1, num_steps=1)
    config = ml_collections.ConfigDict({"attack": attack})
    assert config_sections.evaluation(attack).to_dict() == (
        evaluate.default_evaluation_config(config).to_dict()
    )
    assert config_sections.evaluation().to_dict() == evaluate.default_evaluation_config().to_dict()
    with pytest.raises(TypeError, match=r"unknown knob\(s\) \['epss'\]"):
        config_sections.evaluation(epss=0.1)
