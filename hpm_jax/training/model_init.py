"""The model a config describes, and its starting variables: from scratch or a checkpoint.

    check_init_checkpoint(config)                        # first: before a run writes anything
    check_init_named(config)                             # only that one is named (reads nothing)
    model, kwargs = build_model(config)                  # get_model(name, **kwargs)
    variables = initial_variables(model, config, train_source=source, mesh=mesh)

From scratch (`init.checkpoint` ""): `model.init` with `config.seed`. None: the config
fine-tunes a pretrained model that the user has to name, an error naming
--config.init.checkpoint=DIR (configs have no default paths). From a directory written by
`python -m hpm_jax.convert` or `hpm_jax.models.export.save_model`: the stored model must be the
configured backbone with the same options. An FC checkpoint fine-tuned with an HPM (or l2)
head keeps its backbone, batch-norm statistics and FC weights (the HPM head's `fc` sits at
the FC head's path), and its prototypes start at the class means of the training features
(`init.prototype_examples` of them, without augmentation).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from hpm_jax import data
from hpm_jax.models import Classifier, get_model
from hpm_jax.models.export import MODEL_SPEC, load_model

# Backbone options that change how a model computes, not what it is: a checkpoint trained
# in float32 fine-tunes in bfloat16.
_NOT_ARCHITECTURE = ("dtype",)


class InitCheckpointError(FileNotFoundError):
    """`init.checkpoint` is missing or holds another model than the config describes."""


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def build_model(config: ml_collections.ConfigDict) -> tuple[Classifier, dict[str, Any]]:
    """`get_model(config.model.name, **kwargs)` and those kwargs (for `save_model`).

    kwargs = num_classes, head, the backbone's `model.kwargs` and, for prototype heads,
    `model.head_kwargs` (e.g. mixing, ema_decay, pseudo_count).
    """
    info = data.dataset_info(config.dataset.name)
    if config.model.num_classes != info.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} but {info.name} has "
            f"{info.num_classes} classes; set --config.model.num_classes={info.num_classes}."
        )
    kwargs = {
        "num_classes": int(config.model.num_classes),
        "head": config.model.head,
        **_plain(config.model.kwargs),
    }
    if config.model.head != "fc":
        kwargs.update(_plain(config.model.get("head_kwargs", {})))
    # JSON (model.json) has no tuples: lists throughout, so a reloaded model compares equal.
    kwargs = json.loads(json.dumps(kwargs))
    return get_model(config.model.name, **kwargs), kwargs


def check_init_named(config: ml_collections.ConfigDict) -> None:
    """Raise InitCheckpointError if the config fine-tunes a pretrained model
    (`init.checkpoint` None, as the config files say so) but names none. Reads no file: it
    also holds where the checkpoint lives on another machine (`launch/tpu.sh`)."""
    if config.init.checkpoint is None:
        raise InitCheckpointError(
            f"This config fine-tunes a pretrained {config.model.name} (init.checkpoint is "
            "None): name its directory with --config.init.checkpoint=DIR (written by "
            "`python -m hpm_jax.convert --arch ... --checkpoint FILE.pt --out DIR`, or an "
            "hpm_jax.train WORKDIR/model), or pass --config.init.checkpoint='' to train "
            "from scratch."
        )


def check_init_checkpoint(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Raise InitCheckpointError unless `init.checkpoint` is "" (from scratch) or a model
    directory of the configured backbone whose head this config's head can start from; returns
    its model.json (None from scratch). Reads only model.json: a program calls it before it
    writes anything (`initial_variables` calls it too)."""
    check_init_named(config)
    directory = config.init.checkpoint
    if not directory:
        return None
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(directory):
        raise InitCheckpointError(
            f"init.checkpoint={directory!r} does not exist. Convert a PyTorch checkpoint with "
            "`python -m hpm_jax.convert --arch ... --checkpoint FILE.pt --out DIR` (or train "
            "one with hpm_jax.train, whose WORKDIR/model is such a directory), or set "
            "--config.init.checkpoint='' to train from scratch."
        )
    _, kwargs = build_model(config)
    spec = _check_pretrained(directory, config, kwargs)
    stored_head = spec["kwargs"].get("head", "fc")
    if (config.model.head == "fc" or stored_head != "fc") and stored_head != config.model.head:
        raise InitCheckpointError(
            f"init.checkpoint={directory!r} has a {stored_head!r} head; the config's "
            f"{config.model.head!r} head can start only from an FC checkpoint or its own kind."
        )
    return spec


def _backbone_options(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every field of the backbone `get_model(arch, **kwargs)` builds, defaults included, so a
    checkpoint that spells out a default still matches a config that leaves it out."""
    model = get_model(arch, **kwargs)
    fields = set(type(model.backbone).__dataclass_fields__) - {"parent", "name"}
    options = {f: getattr(model.backbone, f) for f in fields - set(_NOT_ARCHITECTURE)}
    options = json.loads(json.dumps(options, default=str))  # tuples and lists compare equal
    return {"arch": arch, "num_classes": kwargs["num_classes"], **options}


def _check_pretrained(directory: str, config, kwargs: dict[str, Any]) -> dict[str, Any]:
    spec_path = os.path.join(directory, MODEL_SPEC)
    if not os.path.isfile(spec_path):
        raise InitCheckpointError(
            f"init.checkpoint={directory!r} is not a model checkpoint (no {spec_path}). Write "
            "one with `python -m hpm_jax.convert --arch ... --checkpoint FILE.pt --out DIR` or "
            "hpm_jax.models.export.save_model, or set --config.init.checkpoint='' to train "
            "from scratch."
        )
    with open(spec_path) as f:
        spec = json.load(f)
    # The head may change (FC -> HPM, new head options); the backbone and the classes may not.
    stored = _backbone_options(spec["arch"], spec["kwargs"])
    wanted = _backbone_options(config.model.name, kwargs)
    if stored != wanted:
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise InitCheckpointError(
            f"init.checkpoint={directory!r} holds {spec['arch']} with {spec['kwargs']}, but the "
            f"config asks for {config.model.name} with {kwargs} (differing: {changed}). Set "
            "model.name, model.num_classes and model.kwargs to the checkpoint's."
        )
    return spec


def initial_variables(
    model: Classifier,
    config: ml_collections.ConfigDict,
    *,
    train_source: data.Source,
    mesh: Mesh,
) -> dict[str, Any]:
    """Variables to start training from (see the module docstring)."""
    spec = check_init_checkpoint(config)
    if spec is None:
        info = data.dataset_info(config.dataset.name)
        return model.init(jax.random.key(config.seed), jnp.zeros((1, *info.image_shape)))

    directory = os.path.abspath(os.path.expanduser(config.init.checkpoint))
    _, variables = load_model(directory)
    if config.model.head == "fc" or spec["kwargs"].get("head", "fc") != "fc":
        return variables  # the same kind of head (check_init_checkpoint): as stored

    from hpm_jax.models import prototypes  # the HPM-specific initialisation

    variables = prototypes.with_head(variables, model)
    source = train_source
    if config.init.prototype_examples:
        source = data.FirstRecords(train_source, int(config.init.prototype_examples))
    batches = data.eval_iterator(source, batch_size=config.eval.batch_size, mesh=mesh)
    return prototypes.init_prototypes(model, variables, batches)
