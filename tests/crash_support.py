"""Shared pieces of tests/test_crash_campaign.py (no tests here): the simulated kill, the
damage modes, and the training and study helpers.

    with kill_at(monkeypatch, lambda p: p.endswith("s.json"), 2, "after"):
        run()                                  # raises Killed after the 2nd s.json is written
    damage(path, "zeroed")                     # truncated, zeroed, garbage, edited, missing
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from hpm_jax.runtime import integrity

MODES = ("truncated", "zeroed", "garbage")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py")


class Killed(BaseException):
    """The simulated SIGKILL."""


def damage(path, mode: str) -> None:
    """Tear `path`: truncated (half its bytes), zeroed (as long, all zero), garbage (as long,
    random bytes), edited (valid JSON, one value changed: only a checksum tells) or missing."""
    data = open(path, "rb").read()
    if mode == "missing":
        os.remove(path)
        return
    if mode == "edited":
        record = json.loads(data)
        key = next(k for k, v in record.items() if isinstance(v, (int, float, str)))
        record[key] = 0 if not isinstance(record[key], int) or record[key] != 0 else 1
        new = json.dumps(record).encode()
    else:
        new = {
            "truncated": data[: len(data) // 2],
            "zeroed": bytes(len(data)),
            "garbage": np.random.default_rng(len(data)).bytes(len(data)),
        }[mode]
    with open(path, "wb") as f:
        f.write(new)


def install_kill(monkeypatch, matches, nth: int, phase: str) -> list[str]:
    """Raise Killed at the `nth` commit of a file for which `matches(path)`, `phase` "before"
    or "after" it is replaced into place (until `monkeypatch` undoes it). Returns the list
    of matching paths committed so far."""
    real, seen = integrity._commit, []

    def commit(tmp, path):
        hit = matches(path) and len(seen) + 1 == nth
        if matches(path):
            seen.append(path)
        if hit and phase == "before":
            raise Killed(path)
        real(tmp, path)
        if hit and phase == "after":
            raise Killed(path)

    monkeypatch.setattr(integrity, "_commit", commit)
    return seen


@contextlib.contextmanager
def kill_at(monkeypatch, matches, nth: int, phase: str):
    """`install_kill` for the block."""
    with monkeypatch.context() as patch:
        yield install_kill(patch, matches, nth, phase)


def count_commits(monkeypatch, matches, fn) -> int:
    with kill_at(monkeypatch, matches, 0, "never") as seen:
        fn()
    return len(seen)


def comparable(report):
    import evaluation_support

    return evaluation_support.comparable(report)


def train_again(root, workdir):
    import train_support as support

    return support.run(workdir, root, support.tiny_overrides(root))


def assert_same_training(workdir, summary, trained):
    import train_support as support

    _, expected_summary, expected = trained
    got = support.final_params(workdir)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert summary["eval_pgd_accuracy"] == expected_summary["eval_pgd_accuracy"]


def kill_in_step_3(monkeypatch):
    from hpm_jax.training import metrics

    real = metrics.MetricWriter.write

    def write(self, step, scalars):
        if step == 3:
            raise Killed("step 3")
        return real(self, step, scalars)

    monkeypatch.setattr(metrics.MetricWriter, "write", write)


def kill_in_final_model(monkeypatch):
    from hpm_jax.training import train

    def save_model(directory, *args, **kwargs):
        os.makedirs(directory)
        raise Killed("writing the final model")

    monkeypatch.setattr(train, "save_model", save_model)


def _largest(directory):
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


CHECKPOINT_FILES = {  # files of a checkpoint that Orbax reads
    "array-chunk": lambda step: _largest(step / "state" / "d"),
    "array-metadata": lambda step: step / "state" / "_METADATA",
    "run-json": lambda step: step / "run" / "metadata",
}


def fake_stages(tmp_path, monkeypatch):
    """(study config, {stage: workdirs it ran in}): `train.run` and `evaluate.run` replaced by
    stand-ins whose figures depend on the seed; the base model a bare model.json."""
    import evaluation_support

    from hpm_jax.evaluation import evaluate
    from hpm_jax.training import train

    base = tmp_path / "at_model"
    base.mkdir()
    (base / "model.json").write_text('{"arch": "small_cnn", "kwargs": {}}')
    ran = {"train": [], "eval": []}

    def fake_train(config, workdir):
        ran["train"].append(workdir)
        os.makedirs(os.path.join(workdir, "model"), exist_ok=True)
        integrity.write_bytes(os.path.join(workdir, "model", "model.json"), b"{}")
        summary = {"eval_pgd_accuracy": 0.25 + 0.01 * config.seed}
        integrity.write_json(os.path.join(workdir, train.SUMMARY), summary)
        return summary

    def fake_evaluate(config, checkpoint, workdir, log=None):
        ran["eval"].append(workdir)
        ev, acc = config.evaluation, 0.5 + 0.01 * config.seed
        report = {
            "num_examples": ev.num_examples, "dataset": config.dataset.name,
            "split": config.dataset.eval_split, "batch_size": ev.batch_size,
            "settings": json.loads(ev.to_json()),
            "heads": {"hpm": {"clean_accuracy": acc, "msa": {"robust_accuracy": acc / 2,
                      "per_surrogate": {"fc": acc / 2, "ste": acc / 2}}}},
        }  # fmt: skip
        os.makedirs(workdir, exist_ok=True)
        integrity.write_json(os.path.join(workdir, evaluate.REPORT), report)
        return report

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(evaluate, "run", fake_evaluate)
    return evaluation_support.tiny_study_config(str(base), ["study.baseline=False"]), ran
