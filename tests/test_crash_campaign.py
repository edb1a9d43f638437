"""Crash campaign: every file a run resumes from survives a kill at any moment, and a torn or
corrupted copy of it is named in one line and recovered (or stops the program with one line).

A kill is simulated in-process at the moment a file becomes visible (`integrity._commit`, the
os.replace of the atomic writer), just before or just after it, by raising `Killed` (a
BaseException, so nothing on the way out handles it, as nothing handles a SIGKILL); the
benchmark `benchmarks/crash_campaign.py` does real SIGKILLs at random times. Damage modes:
truncated (half the bytes), zeroed (same size, all zero), garbage (same size, random bytes),
edited (valid JSON, one value changed: the checksum's job), missing.

Kill moments tried (ids):
- AutoAttack chain (library, every occurrence of each): state-json/prev/image x
  before/after the replace, and inside-attack (an attack call raises mid-batch)
- evaluation with MSA on an HPM model: identity-after, msa-image-after, msa-prev-after,
  npz-before, report-before
- training: during-step-3 (after checkpoint 2), final-model, summary-before
- study: point-json-after, in the point's evaluation (tests/test_study.py kills there too)

File kinds torn (ids): AutoAttack per-batch image .npy (recomputed: that batch alone), its
state JSON (the .prev copy: one batch redone), both JSON copies (the attack starts afresh);
evaluation.json (one line: damaged, what to do; exit 2 from hpm-evaluate), adversarial/*.npz
(rewritten), the MSA state and images inside a real evaluation; training checkpoints (the
one before is used), metrics.jsonl (damaged lines dropped), summary.json / model.json /
analysis / report markers of the demo and the study (the stage runs again, resumed);
point.json (one line: damaged, what to do). ENOSPC during a state write: the previous state
intact, one line, and the run resumes when space is back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os

import numpy as np
import pytest
import test_autoattack as chain_harness

from hpm_jax import cli, integrity

MODES = ("truncated", "zeroed", "garbage")


class Killed(BaseException):
    """The simulated SIGKILL."""


def damage(path, mode: str) -> None:
    """Tear `path` the way `mode` says (see the module docstring)."""
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


@contextlib.contextmanager
def kill_at(monkeypatch, matches, nth: int, phase: str):
    """Raise Killed at the `nth` commit of a file for which `matches(path)`, `phase` "before"
    or "after" it is replaced into place. Yields the list of matching paths committed."""
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
    try:
        yield seen
    finally:
        monkeypatch.setattr(integrity, "_commit", real)


def count_commits(monkeypatch, matches, fn) -> int:
    with kill_at(monkeypatch, matches, 0, "never") as seen:
        fn()
    return len(seen)


# ---- the AutoAttack chain (library): cheap, so every commit is a kill moment -------------

KINDS = {
    "state-json": lambda p: p.endswith("s.json"),
    "prev": lambda p: p.endswith(".prev"),
    "image": lambda p: p.endswith(".npy"),
}


@pytest.fixture(scope="module")
def chain_reference():
    return chain_harness._resume_config()


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chain_killed_at_every_write_resumes_to_the_same_report(
    kind, phase, chain_reference, tmp_path, monkeypatch
):
    matches = KINDS[kind]
    total = count_commits(
        monkeypatch, matches, lambda: chain_harness._resume_config(tmp_path / "count" / "s.json")
    )
    assert total >= 5, f"only {total} writes of {kind}"
    for nth in sorted({1, 2, total // 2, total}):  # benchmarks/crash_campaign.py: all of them
        state = tmp_path / f"{nth}" / "s.json"
        with pytest.raises(Killed), kill_at(monkeypatch, matches, nth, phase):
            chain_harness._resume_config(state)
        chain_harness.assert_same_report(chain_harness._resume_config(state), chain_reference)


def test_chain_killed_inside_an_attack_resumes_to_the_same_report(chain_reference, tmp_path):
    for call in (1, 4):  # the first batch of the last attack, and one in its middle
        state = tmp_path / f"{call}" / "s.json"
        chain_harness.FAIL_AT.update(frac=1.0, call=call)
        try:
            with pytest.raises(chain_harness.Interrupt):
                chain_harness._resume_config(state)
        finally:
            chain_harness.FAIL_AT.clear()
        chain_harness.assert_same_report(chain_harness._resume_config(state), chain_reference)


@pytest.fixture
def finished_chain(tmp_path):
    state = tmp_path / "s.json"
    chain_harness._resume_config(state)
    return state


def _resume_counting(state):
    """The resumed report, the attack calls it made, and its log lines."""
    lines = []
    chain_harness.SPY = []
    try:
        report = chain_harness._resume_config(state, log=lines.append)
        return report, len(chain_harness.SPY), lines
    finally:
        chain_harness.SPY = None


@pytest.mark.parametrize("mode", [*MODES, "missing"])
def test_a_torn_image_file_is_named_and_that_batch_alone_recomputed(
    mode, finished_chain, chain_reference
):
    images = sorted((finished_chain.parent / "s.json.adv").iterdir())
    torn = images[len(images) // 2]
    damage(torn, mode)
    report, calls, lines = _resume_counting(finished_chain)
    chain_harness.assert_same_report(report, chain_reference)
    assert calls == 1  # one (attack, batch), not the attack and not the chain
    named = [line for line in lines if torn.name in line]
    assert len(named) == 1 and "is damaged" in named[0] and "recomputed" in named[0], lines
    # Recomputed and saved: the next resume reads it back whole.
    assert _resume_counting(finished_chain)[1] == 0


@pytest.mark.parametrize("mode", [*MODES, "edited"])
def test_a_torn_state_file_falls_back_to_its_previous_copy(mode, finished_chain, chain_reference):
    damage(finished_chain, mode)
    report, calls, lines = _resume_counting(finished_chain)
    chain_harness.assert_same_report(report, chain_reference)
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
    chain_harness.assert_same_report(report, chain_reference)
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
        chain_harness._resume_config(state)
    monkeypatch.setattr(integrity, "write_bytes", real)
    path, before = writes[9], writes[10]
    assert (open(path, "rb").read() if os.path.exists(path) else None) == before
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    message = cli.one_line(error.value)
    assert "no space left" in message and "previous copy is intact" in message
    chain_harness.assert_same_report(chain_harness._resume_config(state), chain_reference)


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
