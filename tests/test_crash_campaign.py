"""Crash campaign: every file a run resumes from survives a kill at any moment, and a torn or
corrupted copy of it is named in one line and recovered (or stops the program with one line).

A kill is simulated in-process at the moment a file becomes visible (`integrity._commit`, the
os.replace of the atomic writer), just before or just after it, by raising `Killed` (a
BaseException, so nothing on the way out handles it, as nothing handles a SIGKILL); the
benchmark `benchmarks/crash_campaign.py` does real SIGKILLs at random times. Damage modes:
truncated (half the bytes), zeroed (same size, all zero), garbage (same size, random bytes),
edited (valid JSON, one value changed: the checksum's job), missing.

Kill moments tried (ids):
- AutoAttack chain (library): state-json / prev / image x before / after the replace, each
  at its 1st, 2nd, middle and last write; inside-attack (an attack call raises mid-batch,
  in the first and a middle batch of the last attack)
- evaluation with MSA on an HPM model: identity-after, msa-image-after, msa-prev-after,
  npz-before, report-before
- training, in turn on one workdir: during-step-3 (after checkpoint 2), final-model,
  summary-before
- study, in turn on one workdir: point-json-after, train-summary-before, eval-report-before,
  study-json-before (its bookkeeping, with stand-in stages; tests/test_study.py kills a
  real one inside a point's evaluation)

File kinds torn (ids name kind and mode):
- AutoAttack per-batch image .npy, truncated/zeroed/garbage/missing: named, that batch
  alone recomputed; its state JSON (+ edited): the .prev copy, one batch redone; both JSON
  copies: the attack starts afresh, named
- evaluation.json (+ edited): one line, damaged and what to do, nothing touched; exit 2 and
  one line from hpm-evaluate; MSA images, MSA and FC state JSON, MSA and FC adversarial
  .npz in a real evaluation, each in every mode: the same report
- training checkpoints (array chunk, array metadata, run JSON; every mode): named, moved
  aside, the one before used (or step 0); metrics.jsonl lines: named and dropped
- study point.json (+ edited): one line, damaged and what to do; its eval/report.json and
  train/summary.json: that stage alone again; the demo's training summary.json and
  model/model.json, analysis and evaluation markers: the stage again
- ENOSPC inside a write: the previous copy intact, no temp file left, one line (exit 2
  from the programs), and the run resumes to the same report
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import crash_support as support
import numpy as np
import pytest
import toys
from crash_support import MODES, Killed, count_commits, damage, install_kill, kill_at

from hpm_jax import cli
from hpm_jax.runtime import integrity

pytestmark = pytest.mark.slow  # kills and resumes real runs

# ---- the AutoAttack chain (library): cheap, so every commit is a kill moment -------------

KINDS = {
    "state-json": lambda p: p.endswith("s.json"),
    "prev": lambda p: p.endswith(".prev"),
    "image": lambda p: p.endswith(".npy"),
}


@pytest.fixture(scope="module")
def chain_reference():
    return toys.resume_chain()


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chain_killed_at_every_write_resumes_to_the_same_report(
    kind, phase, chain_reference, tmp_path, monkeypatch
):
    matches = KINDS[kind]
    total = count_commits(
        monkeypatch, matches, lambda: toys.resume_chain(tmp_path / "count" / "s.json")
    )
    assert total >= 5, f"only {total} writes of {kind}"
    for nth in sorted({1, 2, total // 2, total}):  # benchmarks/crash_campaign.py: all of them
        state = tmp_path / f"{nth}" / "s.json"
        with pytest.raises(Killed), kill_at(monkeypatch, matches, nth, phase):
            toys.resume_chain(state)
        toys.assert_same_report(toys.resume_chain(state), chain_reference)


def test_chain_killed_inside_an_attack_resumes_to_the_same_report(chain_reference, tmp_path):
    for call in (1, 4):  # the first batch of the last attack, and one in its middle
        state = tmp_path / f"{call}" / "s.json"
        toys.CHAIN_FAIL_AT.update(frac=1.0, call=call)
        try:
            with pytest.raises(toys.ChainInterrupt):
                toys.resume_chain(state)
        finally:
            toys.CHAIN_FAIL_AT.clear()
        toys.assert_same_report(toys.resume_chain(state), chain_reference)


@pytest.fixture
def finished_chain(tmp_path):
    state = tmp_path / "s.json"
    toys.resume_chain(state)
    return state


def _resume_counting(state):
    """The resumed report, the attack calls it made, and its log lines."""
    lines = []
    toys.CHAIN_SPY = []
    try:
        report = toys.resume_chain(state, log=lines.append)
        return report, len(toys.CHAIN_SPY), lines
    finally:
        toys.CHAIN_SPY = None


@pytest.mark.parametrize("mode", [*MODES, "missing"])
def test_a_torn_image_file_is_named_and_that_batch_alone_recomputed(
    mode, finished_chain, chain_reference
):
    images = sorted((finished_chain.parent / "s.json.adv").iterdir())
    torn = images[len(images) // 2]
    damage(torn, mode)
    report, calls, lines = _resume_counting(finished_chain)
    toys.assert_same_report(report, chain_reference)
    assert calls == 1  # one (attack, batch), not the attack and not the chain
    named = [line for line in lines if torn.name in line]
    assert len(named) == 1 and "is damaged" in named[0] and "recomputed" in named[0], lines
    # Recomputed and saved: the next resume reads it back whole.
    assert _resume_counting(finished_chain)[1] == 0


@pytest.mark.parametrize("mode", [*MODES, "edited"])
def test_a_torn_state_file_falls_back_to_its_previous_copy(mode, finished_chain, chain_reference):
    damage(finished_chain, mode)
    report, calls, lines = _resume_counting(finished_chain)
    toys.assert_same_report(report, chain_reference)
    assert calls == 1  # the batch the previous copy had not recorded
    assert any("s.json is damaged" in line for line in lines), lines
    assert any("saved a batch earlier" in line for line in lines), lines


@pytest.mark.parametrize("mode", MODES)
def test_both_copies_torn_start_the_attack_afresh_with_a_line(
    mode, finished_chain, chain_reference
):
    damage(finished_chain, mode)
    damage(str(finished_chain) + ".prev", mode)
    report, calls, lines = _resume_counting(finished_chain)
    toys.assert_same_report(report, chain_reference)
    assert calls > 1 and any("starts afresh" in line for line in lines), lines


def test_a_full_disk_keeps_the_previous_state_and_stops_with_one_line(
    chain_reference, tmp_path, monkeypatch
):
    state = tmp_path / "s.json"
    real, writes = integrity.write_bytes, []

    def full_after_ten(path, data, **kw):  # the 10th write: the disk fills up inside it
        writes.append(path)
        if len(writes) == 10:
            before = open(path, "rb").read() if os.path.exists(path) else None
            writes.append(before)
            with integrity.atomic_file(path, **kw) as f:
                f.write(data[:3])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(integrity, "write_bytes", full_after_ten)
    with pytest.raises(integrity.DiskFullError) as error:
        toys.resume_chain(state)
    monkeypatch.setattr(integrity, "write_bytes", real)
    path, before = writes[9], writes[10]
    assert (open(path, "rb").read() if os.path.exists(path) else None) == before
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    message = cli.one_line(error.value)
    assert "no space left" in message and "previous copy is intact" in message
    toys.assert_same_report(toys.resume_chain(state), chain_reference)


def test_programs_turn_damage_and_a_full_disk_into_one_line_and_exit_2(tmp_path, capsys):
    for error in (integrity.DamagedFileError(tmp_path / "x.json", "not JSON", "delete it"),
                  integrity.DiskFullError(tmp_path / "x.json")):  # fmt: skip

        def main(argv, overrides, error=error):
            raise error

        with pytest.raises(SystemExit) as exit_:
            cli.run("hpm-test", main, argv=["hpm-test"], config=False)
        assert exit_.value.code == cli.EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hpm-test: error: "), err
        assert "Traceback" not in err[0]


# ---- an evaluation with MSA on an HPM model ------------------------------------------------

EVAL = dict(
    num_examples=16,
    batch_size=8,  # 2 fixed batches of 8 on 4 devices
    version="apgd-ce",  # MSA: APGD-CE through fc, then through ste
    attack_options={"apgd-ce": {"n_iter": 2, "n_restarts": 1}},
    naive_autoattack=False,
    run_checks=False,
)
EVAL_KILLS = {  # id: (which committed file (a regex), its occurrence, before/after the replace)
    "identity-after": (r"state/evaluation\.json", 1, "after"),
    "msa-image-after": (r"msa_hpm/batch_\d+\.json\.adv/", 1, "after"),
    "msa-prev-after": (r"msa_hpm/batch_\d+\.json\.prev", 2, "after"),
    "msa-result-after": (r"msa_hpm/batch_00000\.npz", 1, "after"),  # a batch done, one to go
    "npz-before": (r"adversarial/msa_hpm\.npz", 1, "before"),
    "report-before": (r"report\.json", 1, "before"),
}


@pytest.fixture(scope="module")
def hpm_evaluation(tmp_path_factory):
    """A tiny HPM model (a few SGD steps, class-mean prototypes) and its finished evaluation:
    AutoAttack on its FC and l2-EMA heads, MSA on HPM."""
    import evaluation_support

    from hpm_jax.data import offline
    from hpm_jax.evaluation import evaluate
    from hpm_jax.models.export import save_model

    if not offline.fashion_mnist_files_present():
        pytest.skip("needs apt-get install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("hpm")
    _, variables = evaluation_support.train_tiny(n_steps=10)
    checkpoint = save_model(str(root / "model"), variables, arch="small_cnn", num_classes=10,
                            head="hpm", **evaluation_support.ARCH)  # fmt: skip
    config = evaluation_support.tiny_config(**EVAL)
    workdir = root / "eval"
    report = evaluate.run(config, checkpoint, str(workdir), log=None)
    assert (
        report["heads"]["hpm"]["msa"]["robust_accuracy"] < report["heads"]["hpm"]["clean_accuracy"]
    )
    return config, checkpoint, workdir, evaluation_support.comparable(report)


@pytest.mark.parametrize("moment", sorted(EVAL_KILLS))
def test_an_evaluation_killed_at_each_moment_resumes_to_the_same_report(
    moment, hpm_evaluation, tmp_path, monkeypatch
):
    from hpm_jax.evaluation import evaluate

    config, checkpoint, _, expected = hpm_evaluation
    name, nth, phase = EVAL_KILLS[moment]
    with pytest.raises(Killed), kill_at(monkeypatch, lambda p: re.search(name, p), nth, phase):
        evaluate.run(config, checkpoint, str(tmp_path), log=None)
    resumed = evaluate.run(config, checkpoint, str(tmp_path), log=None)
    assert support.comparable(resumed) == expected


def _copy(workdir, tmp_path):
    target = tmp_path / "eval"
    shutil.copytree(workdir, target)
    return target


@pytest.mark.parametrize("mode", [*MODES, "edited"])
def test_a_torn_evaluation_identity_says_it_is_damaged_and_what_to_do(
    mode, hpm_evaluation, tmp_path
):
    from hpm_jax.evaluation import evaluate

    config, checkpoint, workdir, _ = hpm_evaluation
    workdir = _copy(workdir, tmp_path)
    identity = workdir / "state" / "evaluation.json"
    damage(identity, mode)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(integrity.DamagedFileError) as error:
        evaluate.run(config, checkpoint, str(workdir), log=None)
    message = cli.one_line(error.value)
    assert f"{identity} is damaged" in message and "other settings" not in message
    assert "delete the file and run again" in message and "--overwrite" in message
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_hpm_evaluate_stops_on_a_torn_identity_with_one_line_and_exit_2(hpm_evaluation, tmp_path):
    _, checkpoint, workdir, _ = hpm_evaluation
    workdir = _copy(workdir, tmp_path)
    damage(workdir / "state" / "evaluation.json", "truncated")
    settings = [f"--config.evaluation.{k}={v!r}" for k, v in EVAL.items()]
    settings += ["--config.evaluation.eps=0.1", "--config.evaluation.surrogates=('fc', 'ste')"]
    result = subprocess.run(
        [sys.executable, "-m", "hpm_jax.evaluate", f"--config={support.CONFIG}",
         f"--checkpoint={checkpoint}", f"--workdir={workdir}", *settings],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("hpm-evaluate: error: ")
    assert "evaluation.json is damaged" in lines[-1]


# Each resume tears one file of every kind at once, each kind with another mode, so that
# three resumes try every kind in every mode. A finished section keeps one result per batch
# (its attack state files go once the result is written; tests/test_autoattack.py tears
# those).
TORN_KINDS = ("msa-result", "fc-result", "msa-npz", "fc-npz")


def _torn_path(workdir, kind):
    state = workdir / "state"
    return {
        "msa-result": lambda: state / "msa_hpm" / "batch_00000.npz",
        "fc-result": lambda: state / "autoattack_fc" / "batch_00001.npz",
        "msa-npz": lambda: workdir / "adversarial" / "msa_hpm.npz",
        "fc-npz": lambda: workdir / "adversarial" / "autoattack_fc.npz",
    }[kind]()


@pytest.mark.parametrize("shift", range(len(MODES)), ids=lambda s: f"modes-from-{MODES[s]}")
def test_torn_evaluation_files_are_named_and_recovered_to_the_same_report(
    shift, hpm_evaluation, tmp_path
):
    from hpm_jax.evaluation import evaluate

    config, checkpoint, workdir, expected = hpm_evaluation
    originals = {k: np.load(_torn_path(workdir, k)) for k in TORN_KINDS if "npz" in k}
    workdir = _copy(workdir, tmp_path)
    torn = {}
    for i, kind in enumerate(TORN_KINDS):
        torn[kind] = _torn_path(workdir, kind)
        damage(torn[kind], MODES[(i + shift) % len(MODES)])
    lines = []
    assert (
        support.comparable(evaluate.run(config, checkpoint, str(workdir), log=lines.append))
        == expected
    )
    for kind, path in torn.items():
        if "npz" in kind:  # an output, rewritten whole by the resumed run
            with np.load(path) as got:
                for key in ("x_adv", "robust"):
                    np.testing.assert_array_equal(got[key], originals[kind][key])
        else:
            named = [line for line in lines if f"{path} is damaged" in line]
            assert len(named) == 1, (kind, lines)


# ---- training ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted tiny run on mock CIFAR-10 (3 steps, checkpoints at 2 and 3)."""
    import train_support as support

    root = tmp_path_factory.mktemp("train")
    summary = support.run(root / "work", root, support.tiny_overrides(root))
    return root, summary, support.final_params(root / "work")


TRAIN_KILLS = (  # one workdir, killed at each in turn, each run resuming the one before
    ("during-step-3", support.kill_in_step_3),  # after checkpoint 2
    ("final-model", support.kill_in_final_model),  # after the last checkpoint (3)
    ("summary-before", lambda patch: install_kill(
        patch, lambda p: p.endswith("summary.json"), 1, "before")),
)  # fmt: skip


def test_a_training_run_killed_at_each_moment_in_turn_resumes_to_the_same_model(
    trained, tmp_path, monkeypatch
):
    root, workdir, tried = trained[0], tmp_path / "work", []
    for moment, kill in TRAIN_KILLS:
        with monkeypatch.context() as patch:
            kill(patch)
            with pytest.raises(Killed):
                support.train_again(root, workdir)
        tried.append(moment)
        assert not (workdir / "summary.json").exists()
    assert tried == [m for m, _ in TRAIN_KILLS]
    summary = support.train_again(root, workdir)
    assert summary["resumed_from"] == 3
    support.assert_same_training(workdir, summary, trained)


# Each resume retrains (seconds), so two: the newest checkpoint torn (the one before is used),
# then both torn (the run starts over); every part and every mode once.
TORN_CHECKPOINTS = {
    "step3-array-chunk-truncated": ({3: ("array-chunk", "truncated")}, 2),
    "step3-run-json-zeroed+step2-array-metadata-garbage": (
        {3: ("run-json", "zeroed"), 2: ("array-metadata", "garbage")}, 0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TORN_CHECKPOINTS))
def test_a_torn_checkpoint_is_named_moved_aside_and_the_one_before_used(
    case, trained, tmp_path, capsys
):
    root = trained[0]
    workdir = tmp_path / "work"
    shutil.copytree(root / "work", workdir)
    (workdir / "summary.json").unlink()  # as if killed before the end
    torn, resumed_from = TORN_CHECKPOINTS[case]
    for step, (part, mode) in torn.items():
        damage(support.CHECKPOINT_FILES[part](workdir / "checkpoints" / str(step)), mode)
    capsys.readouterr()
    summary = support.train_again(root, workdir)
    out = capsys.readouterr().out
    for step in torn:
        assert out.count(f"checkpoints/{step} is damaged") == 1, out
        assert (workdir / "damaged_checkpoints" / str(step)).is_dir()
    assert summary["resumed_from"] == resumed_from
    support.assert_same_training(workdir, summary, trained)


@pytest.mark.parametrize("mode", MODES)
def test_torn_metrics_lines_are_named_and_dropped(mode, tmp_path, capsys):
    from hpm_jax.training import metrics

    path = tmp_path / metrics.JSONL
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)]
    path.write_text("".join(lines))
    # Tear the third line in place (same length: the lines around it stay whole).
    start = len("".join(lines[:2]))
    data = bytearray(path.read_bytes())
    piece = bytes(data[start : start + len(lines[2]) - 1])
    torn = {"truncated": piece[: len(piece) // 2] + b" " * (len(piece) - len(piece) // 2),
            "zeroed": bytes(len(piece)), "garbage": b"\xff" * len(piece)}[mode]  # fmt: skip
    data[start : start + len(piece)] = torn
    path.write_bytes(bytes(data))
    metrics.MetricWriter(str(tmp_path), start_step=4).close()
    assert "1 damaged line(s) dropped" in capsys.readouterr().out
    assert [r["step"] for r in metrics.read_jsonl(str(path))] == [1, 2, 4]


# ---- the study ----------------------------------------------------------------------------
# The study's own bookkeeping (point.json, which stage to run, the table) with stand-ins for
# training and evaluation that write their markers as the real ones do: those two resume as
# the tests above show, and tests/test_study.py kills a real study inside a point.

STUDY_KILLS = (  # one workdir, killed at each in turn, each run resuming the one before
    ("point-json-after", "point.json", "after"),
    ("train-summary-before", "train/summary.json", "before"),
    ("eval-report-before", "eval/report.json", "before"),
    ("study-json-before", "study.json", "before"),
)


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """(study config, {stage: workdirs it ran in}), `crash_support.fake_stages`."""
    return support.fake_stages(tmp_path, monkeypatch)


def _table(config, workdir, log=None):
    import evaluation_support

    from hpm_jax.experiments import study

    return evaluation_support.study_rows(study.run(config, str(workdir), log=log))


def test_a_study_killed_at_each_moment_in_turn_resumes_to_the_same_table(
    fake_stages, tmp_path, monkeypatch
):
    from hpm_jax.experiments import study

    config, _ = fake_stages
    expected = _table(config, tmp_path / "reference")
    workdir = str(tmp_path / "study")
    tried = []
    for moment, name, phase in STUDY_KILLS:
        with pytest.raises(Killed), kill_at(monkeypatch, lambda p, n=name: p.endswith(n), 1, phase):
            study.run(config, workdir, log=None)
        tried.append(moment)
    assert tried == [m for m, _, _ in STUDY_KILLS]
    assert _table(config, workdir) == expected


@pytest.mark.parametrize("mode", [*MODES, "edited"])
def test_a_torn_point_json_says_it_is_damaged_and_what_to_do(mode, fake_stages, tmp_path):
    from hpm_jax.experiments import study

    config, _ = fake_stages
    _table(config, tmp_path)
    point = tmp_path / "points" / "default" / "seed_0" / study.POINT_JSON
    damage(point, mode)
    with pytest.raises(integrity.DamagedFileError) as error:
        study.run(config, str(tmp_path), log=None)
    message = cli.one_line(error.value)
    assert f"{point} is damaged" in message and "delete the file and run again" in message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("marker", ["eval/report.json", "train/summary.json"])
def test_a_torn_study_marker_reruns_its_stage_to_the_same_table(
    marker, mode, fake_stages, tmp_path
):
    config, ran = fake_stages
    expected = _table(config, tmp_path)
    first = {k: list(v) for k, v in ran.items()}
    point = tmp_path / "points" / "default" / "seed_0"
    damage(point / marker, mode)
    lines = []
    assert _table(config, tmp_path, log=lines.append) == expected
    stage = marker.split("/")[0]
    assert ran[stage] == [*first[stage], str(point / stage)]  # that stage alone, once more
    assert {k: v for k, v in ran.items() if k != stage} == {
        k: v for k, v in first.items() if k != stage
    }
    assert sum(f"{marker} is damaged" in line for line in lines) == 1, lines


# ---- the demo's stage markers ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("marker", ["summary.json", "model/model.json"])
def test_a_torn_demo_marker_reruns_its_stage(marker, mode, tmp_path, monkeypatch):
    from hpm_jax.evaluation.processes import Processes
    from hpm_jax.experiments import demo
    from hpm_jax.training import train

    alone = Processes(0, 1)
    stage = tmp_path / "at"
    (stage / "model").mkdir(parents=True)
    integrity.write_json(stage / "summary.json", {"steps": 3})
    integrity.write_bytes(stage / "model" / "model.json", b'{"arch": "small_cnn", "kwargs": {}}')
    runs, lines = [], []
    monkeypatch.setattr(train, "run", lambda config, directory: runs.append(directory) or {})
    assert demo._train(None, str(stage), lines.append, alone) == {"steps": 3}  # whole: skipped
    assert runs == []
    damage(stage / marker, mode)
    demo._train(None, str(stage), lines.append, alone)
    assert runs == [str(stage)]  # train.run resumes from the stage's checkpoints
    assert sum(f"{marker} is damaged" in line for line in lines) == 1, lines
    for name in ("summary.json", "report.json"):  # the analysis and evaluation stages' markers
        integrity.write_json(tmp_path / name, {"done": True})
        path = str(tmp_path / name)
        assert alone.read_done(path, lines.append, "runs again") == {"done": True}
        damage(tmp_path / name, mode)
        assert alone.read_done(path, lines.append, "runs again") is None
        assert sum(f"{name} is damaged" in line for line in lines) >= 1


@pytest.mark.parametrize("mode", ["zeroed", "garbage", "missing"])
def test_a_damaged_model_checkpoint_is_one_line_not_an_orbax_traceback(hpm_evaluation, tmp_path,
                                                                       mode):  # fmt: skip
    """The model directory an evaluation loads: its largest array chunk and Orbax's metadata
    torn, each is named as damaged (the programs print DamagedFileError as one line)."""
    from hpm_jax.models.export import load_model
    from hpm_jax.runtime.integrity import DamagedFileError

    _, checkpoint, _, _ = hpm_evaluation
    for torn in ("_METADATA", "chunk"):
        copy = tmp_path / torn / "model"
        shutil.copytree(checkpoint, copy)
        variables = copy / "variables"
        target = variables / "_METADATA" if torn == "_METADATA" else _largest_file(variables)
        support.damage(str(target), mode)
        with pytest.raises(DamagedFileError, match="variables is damaged"):
            load_model(str(copy))


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
