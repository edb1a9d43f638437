"""The experiment configs (configs/*.py) and the defaults they share (hpm_jax.config_sections):
invariants over every file and every combination of its variants, not a frozen snapshot."""

import glob
import importlib.util
import itertools
import json
import os

import ml_collections
import pytest

from hpm_jax import config_lib, config_sections
from hpm_jax.evaluation import evaluate
from hpm_jax.training import model_init

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))
SECTIONS = (*config_sections.TRAINING_SECTIONS, "evaluation")


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


def test_a_change_in_a_default_shows_in_every_config(monkeypatch):
    for name in SECTIONS:
        monkeypatch.setitem(config_sections.DEFAULTS, name, {**config_sections.DEFAULTS[name]})
        monkeypatch.setitem(config_sections.DEFAULTS[name], "from_defaults", True)
    for spec in ALL_SPECS:
        config = config_lib.load_config(spec)
        written = json.loads(config.to_json())  # as run records store it: in insertion order
        assert list(written)[: len(SECTIONS) + 1] == ["seed", *SECTIONS], _name(spec)
        for name in SECTIONS:
            assert config[name].get("from_defaults") is True, (_name(spec), name)


def test_sections_take_their_keys_in_the_tables_order_and_refuse_unknown_ones():
    given = dict(step_size=0.1, num_steps=1, mode="fc", eps=0.5)  # out of order
    attack = config_sections.section("attack", given)
    assert list(json.loads(attack.to_json())) == list(config_sections.DEFAULTS["attack"])
    assert (attack.eps, attack.mode, attack.norm) == (0.5, "fc", "Linf")
    with pytest.raises(TypeError, match=r"attack: unknown key\(s\) \['epss'\]; its keys are"):
        config_sections.section("attack", {**given, "epss": 0.1})
    with pytest.raises(TypeError, match=r"attack\.eps is required"):
        config_sections.section("attack", dict(step_size=0.1, num_steps=1))
    with pytest.raises(TypeError, match=r"eval\.attack: unknown key\(s\) \['steps'\]"):
        config_sections.section(
            "eval",
            dict(batch_size=1, every_steps=0, num_examples=0, attack=dict(steps=1)),
        )
    model = config_sections.section(  # head_kwargs is open: any HPMHead field
        "model", dict(name="m", num_classes=2, head_kwargs=dict(lam=0.3, pseudo_count=1.0))
    )
    assert model.head_kwargs.to_dict() == {
        "mixing": "count",
        "pseudo_count": 1.0,
        "ema_decay": 0.99,
        "lam": 0.3,
    }


CIFAR_VARIANTS = _variants(os.path.join(CONFIG_DIR, "cifar10.py"))
CIFAR_ARGS = [
    ",".join(c)
    for r in range(len(CIFAR_VARIANTS) + 1)
    for c in itertools.combinations(CIFAR_VARIANTS, r)
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
    attack = config_sections.section("attack", dict(norm="L2", eps=0.5, step_size=0.1, num_steps=1))
    config = ml_collections.ConfigDict({"attack": attack})
    assert config_sections.evaluation(attack).to_dict() == (
        evaluate.default_evaluation_config(config).to_dict()
    )
    assert config_sections.evaluation().to_dict() == evaluate.default_evaluation_config().to_dict()
    with pytest.raises(TypeError, match=r"evaluation: unknown key\(s\) \['epss'\]"):
        config_sections.evaluation(epss=0.1)


def test_the_demo_runs_on_its_default_config_without_a_config_flag():
    """`hpm-demo --workdir=W` (no --config) loads configs/fashion_mnist.py and its :hpm variant
    (the default's path broke once when the demo moved into hpm_jax/experiments/)."""
    from hpm_jax.experiments import demo

    assert os.path.samefile(demo.DEFAULT_CONFIG, os.path.join(CONFIG_DIR, "fashion_mnist.py"))
    at_config, hpm_config = demo.stage_configs()
    assert at_config.dataset.name == hpm_config.dataset.name == "fashion_mnist"
    assert at_config.model.head == "fc" and hpm_config.model.head == "hpm"
