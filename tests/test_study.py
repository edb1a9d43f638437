"""The HPM design-space study (`hpm_jax.experiments.study`) on a tiny model and budget: end to
end, the table and plot, a resume after a simulated kill and after deleting one point's results
(both reproduce the table), config checks, and the interval arithmetic against scipy."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from evaluation_support import STUDY_CONFIG, TINY_MODEL, TINY_STUDY, study_rows, tiny_study_config

from hpm_jax import config_lib
from hpm_jax.data import offline
from hpm_jax.evaluation import evaluate
from hpm_jax.experiments import study
from hpm_jax.runtime.identity import WorkdirMismatchError
from hpm_jax.training import train

pytestmark = pytest.mark.slow  # runs a design-space study end to end

needs_data = pytest.mark.skipif(
    not offline.fashion_mnist_files_present(), reason="needs apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny untrained FC model, saved as training saves one: every point starts from it
    (training it too would only add a compile to the test)."""
    import jax
    import jax.numpy as jnp

    from hpm_jax.models.export import save_model
    from hpm_jax.training import model_init

    config = config_lib.load_config(
        STUDY_CONFIG.replace("fashion_mnist_study", "fashion_mnist"), TINY_MODEL
    )
    model, kwargs = model_init.build_model(config)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return save_model(
        os.fspath(tmp_path_factory.mktemp("at") / "model"),
        variables,
        arch=config.model.name,
        **kwargs,
    )


@needs_data
def test_study_runs_resumes_after_a_kill_and_after_a_deleted_point(
    base_model, tmp_path, monkeypatch
):
    config = tiny_study_config(base_model)
    workdir = os.fspath(tmp_path / "study")
    real_evaluate = evaluate.run
    calls = []

    def killed_in_second_point(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:  # baseline, default, convex: dies evaluating the second point
            raise KeyboardInterrupt("simulated kill")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate, "run", killed_in_second_point)
    with pytest.raises(KeyboardInterrupt):
        study.run(config, workdir, log=None)
    monkeypatch.setattr(evaluate, "run", real_evaluate)
    # The killed point trained; its evaluation had not finished; no table was written.
    killed = os.path.join(workdir, "points", "convex", "seed_0")
    assert os.path.isfile(os.path.join(killed, "train", train.SUMMARY))
    assert not os.path.isfile(os.path.join(killed, "eval", evaluate.REPORT))
    assert not os.path.exists(os.path.join(workdir, study.STUDY_JSON))

    lines = []
    table = study.run(config, workdir, log=lines.append)
    assert sum("complete; skipped" in line for line in lines) == 1  # default
    for name in (study.STUDY_JSON, study.STUDY_MD, study.STUDY_PNG):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    with open(os.path.join(workdir, study.STUDY_JSON)) as f:
        assert study_rows(json.load(f)) == study_rows(table)
    assert [r["name"] for r in table["rows"]] == ["default", "convex"]
    assert table["baseline"]["clean"] >= table["baseline"]["autoattack"]
    for row in table["rows"]:
        assert row["msa"]["n"] == 1 and row["msa"]["half_width"] is None
        assert row["msa"]["mean"] <= row["clean"]["mean"]
        assert list(row["msa_per_surrogate"]) == ["fc", "ste"]
        # MSA's figure is the worst case: no higher than after its last surrogate.
        assert row["msa"]["mean"] <= row["msa_per_surrogate"]["ste"]["mean"] + 1e-9
    convex = table["rows"][1]
    assert convex["overrides"] == ["model.head_kwargs.mixing='convex'"]
    paired = [
        table["per_seed"]["convex"][s]["msa"] - table["per_seed"]["default"][s]["msa"]
        for s in ("0",)
    ]
    assert convex["msa_minus_default"]["values"] == pytest.approx(paired)
    with open(os.path.join(killed, "train", "model", "model.json")) as f:
        assert json.load(f)["kwargs"]["mixing"] == "convex"
    with open(
        os.path.join(workdir, "points", "default", "seed_0", "train", "model", "model.json")
    ) as f:
        assert json.load(f)["kwargs"]["mixing"] == "count"
    md = open(os.path.join(workdir, study.STUDY_MD)).read()
    assert "| FC baseline |" in md and "| convex |" in md and "n=16" in md

    # Deleting one point's results: that point alone runs again, to the same table.
    shutil.rmtree(os.path.join(workdir, "points", "default", "seed_0"))
    again = []
    assert study_rows(study.run(config, workdir, log=again.append)) == study_rows(table)
    assert sum("complete; skipped" in line for line in again) == 1  # convex

    # The same name with other overrides is refused before anything runs.
    changed = tiny_study_config(base_model, ['study.points.convex=("model.head_kwargs.lam=0.3",)'])
    with pytest.raises(WorkdirMismatchError, match=r"overrides.*another name"):
        study.run(changed, workdir, log=None)
    # A knob a newer hpm-jax adds (present on one side only) is no change.
    point = os.path.join(workdir, "points", "convex", "seed_0", study.POINT_JSON)
    with open(point) as f:
        record = json.load(f)
    del record["config"]["evaluation"]["surrogates"]
    del record["checksum"]  # as that older hpm-jax wrote it (an edited copy reads as damaged)
    with open(point, "w") as f:
        json.dump(record, f)
    assert study_rows(study.run(config, workdir, log=None)) == study_rows(table)


def test_interval_matches_scipy_student_t():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 10, 29, 30, 31, 45, 100, 1000):
        assert study.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-4)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 40):
        values = rng.uniform(0.3, 0.7, n)
        got = study.interval(values)
        low, high = scipy_stats.t.interval(
            0.95, n - 1, loc=values.mean(), scale=scipy_stats.sem(values)
        )
        assert got["mean"] == pytest.approx(values.mean())
        # The table's quantiles have 4 decimals: the half-width agrees to 1e-5 relative.
        assert got["mean"] - got["half_width"] == pytest.approx(low, abs=1e-5)
        assert got["mean"] + got["half_width"] == pytest.approx(high, abs=1e-5)
    # Two seeds by hand: t(1) = 12.706, sd = |a - b| / sqrt(2), so half = 12.706 |a - b| / 2.
    two = study.interval([0.50, 0.54])
    assert two["half_width"] == pytest.approx(12.7062 * 0.04 / 2, rel=1e-4)
    assert study.interval([0.5])["half_width"] is None
    assert math.isclose(study.interval([0.5, 0.5])["half_width"], 0.0)


def test_summary_over_seeds_intervals_table_and_plot(tmp_path):
    """summarize / markdown / plot on made-up figures of 2 points x 3 seeds."""
    scipy_stats = pytest.importorskip("scipy.stats")
    config = study.load_study_config(STUDY_CONFIG, [*TINY_STUDY, "study.seeds=(0, 1, 2)"])
    msa = {"default": [0.45, 0.47, 0.44], "convex": [0.50, 0.46, 0.48]}
    per_seed = {
        name: {
            seed: {
                "clean": 0.7 + 0.01 * seed,
                "msa": msa[name][seed],
                "msa_per_surrogate": {"fc": msa[name][seed] + 0.05, "ste": msa[name][seed]},
                "fc_clean": 0.78,
                "fc_autoattack": 0.57,
                "ema_l2_autoattack": 0.56,
                "train_pgd_accuracy": 0.5,
                "settings": "n=256 (made up)",
            }
            for seed in (0, 1, 2)
        }
        for name in msa
    }
    baseline = {"checkpoint": "/x", "clean": 0.77, "autoattack": 0.59}
    table = study.summarize(config.study, ["default", "convex"], [0, 1, 2], per_seed, baseline)
    convex = table["rows"][1]
    v = np.asarray(msa["convex"])
    half = scipy_stats.t.ppf(0.975, 2) * scipy_stats.sem(v)
    assert convex["msa"]["mean"] == pytest.approx(v.mean())
    assert convex["msa"]["half_width"] == pytest.approx(half, rel=1e-4)
    d = v - np.asarray(msa["default"])
    assert convex["msa_minus_default"]["mean"] == pytest.approx(d.mean())
    assert convex["msa_minus_default"]["half_width"] == pytest.approx(
        scipy_stats.t.ppf(0.975, 2) * scipy_stats.sem(d), rel=1e-4
    )
    assert "msa_minus_default" not in table["rows"][0]
    paths = study.write(table, os.fspath(tmp_path))
    md = open(paths["md"]).read()
    assert f"| {100 * v.mean():.1f} ± {100 * half:.1f} |" in md
    assert "| FC baseline |" in md and "3 training seed(s)" in md
    assert 0 < os.path.getsize(paths["png"]) < 200_000


def test_study_config_errors_name_the_fix(tmp_path):
    config = study.load_study_config(STUDY_CONFIG, ["study.run=('nope',)"])
    with pytest.raises(study.StudyError, match=r"not in study\.points"):
        study.study_config(config)
    config = study.load_study_config(STUDY_CONFIG, ["study.seeds=(0, 0)"])
    with pytest.raises(study.StudyError, match="distinct"):
        study.study_config(config)
    config = study.load_study_config(STUDY_CONFIG, ["study.points={'a/b': ()}", "study.run=()"])
    with pytest.raises(study.StudyError, match="name"):
        study.study_config(config)
    config = study.load_study_config(STUDY_CONFIG, ["init.checkpoint=''"])
    with pytest.raises(study.StudyError, match=r"init\.checkpoint"):
        study.run(config, os.fspath(tmp_path), log=None)
    # An unknown key in a point's overrides fails before any training, naming the keys.
    config = study.load_study_config(
        STUDY_CONFIG, ["study.points.convex=('model.head_kwargs.lamb=0.3',)"]
    )
    with pytest.raises(config_lib.ConfigError, match="lam"):
        study.point_config(config, tuple(config.study.points.convex), 0)


def test_every_head_knob_is_overridable_and_fashion_mnist_gets_a_default_study():
    config = study.load_study_config(
        STUDY_CONFIG.replace("fashion_mnist_study", "fashion_mnist"), ["study.seeds=(3,)"]
    )
    assert list(config.study.points) == ["default"] and config.model.head == "hpm"
    point = study.point_config(
        config,
        (
            "model.head_kwargs.lam=0.3",
            "model.head_kwargs.squared=True",
            "model.head_kwargs.ste_temperature=2.0",
        ),
        seed=3,
    )
    assert point.seed == 3 and "study" not in point
    kw = point.model.head_kwargs
    assert (kw.lam, kw.squared, kw.ste_temperature, kw.mixing) == (0.3, True, 2.0, "count")


def test_a_point_resumes_under_another_batch_sharding_but_not_another_eps(tmp_path):
    """point.json records what decides a point's result: evaluation.batch_sharding (who
    computes) is left out, as in the evaluation's own workdir identity; eps is not."""
    from hpm_jax.evaluation.processes import Processes

    point = study.point_config(tiny_study_config("/no/model"), (), 0)
    alone, directory = Processes(0, 1), str(tmp_path / "point")

    def record(**evaluation):
        config = point.copy_and_resolve_references()
        config.evaluation.update(evaluation)
        return {"overrides": [], "seed": 0, "config": study._result_config(config)}

    study._check_point(directory, record(), alone)  # writes point.json
    study._check_point(directory, record(batch_sharding="global"), alone)  # the same point
    with pytest.raises(WorkdirMismatchError, match="eps"):
        study._check_point(directory, record(eps=0.2), alone)
