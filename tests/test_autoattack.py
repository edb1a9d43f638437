"""The AutoAttack chain: compaction and scatter-back, report, log lines, resume, compilations.

Chain logic is tested with small attacks of known outcome (`shift_attack`: move every pixel
down by frac * eps, against a model that thresholds the mean intensity), so every flag and
image of the report can be predicted exactly; the real attacks are tested on a linear model
whose minimal adversarial perturbations are known in closed form.
"""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import toys
from platform_support import take_devices
from toys import (
    CHAIN_EPS,
    CHAIN_FAIL_AT,
    CHAIN_FRACS,
    CHAIN_SIZES,
    CHAIN_TRACES,
    ChainInterrupt,
    assert_same_report,
    chain_data,
    chain_ids,
    mean_model,
    resume_chain,
    run_chain,
    shift_chain,
)

from hpm_jax.attacks import (
    AutoAttack,
    batching,
    versions,
)
from hpm_jax.attacks.resume import StateStore
from hpm_jax.runtime.identity import WorkdirMismatchError
from hpm_jax.runtime.sharding import make_mesh


# --------------------------------------------------------------------------------- buckets
def test_bucket_sizes_shrink_by_an_eighth_in_multiples_of_4_and_the_device_count():
    # 250 -> 219 -> 192 -> 168 -> 147 -> 129 -> 113 -> 99 -> 87 -> 77 -> 68 -> 60 -> 53 -> 47
    # -> 42 -> 37 -> 33 -> 29 -> 26 -> 23 -> 21 -> 19 -> 17 -> 15, each rounded up to 4.
    assert batching.bucket_sizes(250, 4) == (
        252, 220, 192, 168, 148, 132, 116, 100, 88, 80, 68, 60, 56, 48, 44, 40, 36, 32, 28, 24,
        20, 16,
    )  # fmt: skip
    for n in (1, 2):  # the same sizes, hence the same buckets and draws, on 1, 2 and 4 devices
        assert batching.bucket_sizes(250, n) == batching.bucket_sizes(250, 4)
    assert batching.bucket_sizes(96, 12) == (96, 84, 72, 60, 48, 36, 24, 12)
    # Near the floor ceil(7/8 n) = n: the sizes still fall, one granule at a time.
    assert batching.bucket_sizes(64, 1, min_size=1) == (
        64, 56, 52, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4,
    )  # fmt: skip
    assert batching.bucket_sizes(64, 1, min_size=1, step=3 / 4) == (
        64,
        48,
        36,
        28,
        24,
        16,
        12,
        8,
        4,
    )
    # 9 robust points of a batch of 32 run as 12 rows (with multiples of 8 they ran as 16); 36
    # of 128 as 36 (as 44 with steps of 3/4).
    assert batching.pick_size(9, batching.bucket_sizes(32, 2)) == 12
    assert batching.pick_size(36, batching.bucket_sizes(128, 2)) == 36
    # No size wastes more than an eighth of its rows on the points the next size cannot hold.
    sizes = batching.bucket_sizes(300, 2)
    assert all((big - small) / big <= 1 / 8 + 4 / big for big, small in itertools.pairwise(sizes))
    with pytest.raises(ValueError, match="step must lie strictly between 0 and 1"):
        batching.bucket_sizes(64, 1, step=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        batching.bucket_sizes(0, 4)
    with pytest.raises(ValueError, match="must hold a whole batch of 16; add 16"):
        batching.check_bucket_sizes((8, 4), 16, 4)
    with pytest.raises(ValueError, match="do not split evenly over the 4 devices"):
        batching.check_bucket_sizes((16, 6), 16, 4)


def test_compact_keeps_the_points_in_order_and_pads_by_repeating_them():
    b = batching.compact(np.array([5, 9, 11]), (16, 8, 4))
    assert (b.size, b.n) == (4, 3)
    np.testing.assert_array_equal(b.index, [5, 9, 11, 5])
    np.testing.assert_array_equal(b.real, [5, 9, 11])
    assert batching.compact(np.arange(9), (16, 8, 4)).size == 16
    with pytest.raises(ValueError, match="do not fit"):
        batching.compact(np.arange(17), (16, 8))
    slices = batching.batch_slices(19, 8)
    assert [s.tolist() for s in slices] == [list(range(8)), list(range(8, 16)), [16, 17, 18]]


# ------------------------------------------------------------------------ chain, report, log
def test_chain_scatters_back_exactly_the_expected_points_and_images():
    x, y, t = chain_data(45)
    lines = []
    toys.CHAIN_SPY = []
    try:
        report = run_chain(x, y, log=lines.append)
    finally:
        spied, toys.CHAIN_SPY = toys.CHAIN_SPY, None

    clean = (t > 0.5) == (y == 0)
    np.testing.assert_array_equal(report.clean, clean)
    robust, x_want = clean.copy(), x.copy()
    after = {}
    for i, frac in enumerate(CHAIN_FRACS):
        broken = robust & (y == 0) & (t - frac * CHAIN_EPS < 0.5)
        x_want[broken] = np.clip(x[broken] - np.float32(frac * CHAIN_EPS), 0, 1)
        robust &= ~broken
        after[f"shift-{i}"] = robust.mean()
    np.testing.assert_array_equal(report.robust, robust)
    np.testing.assert_allclose(report.x_adv, x_want, atol=1e-6)
    assert report.robust_accuracy_after == pytest.approx(after)
    assert report.robust_accuracy == pytest.approx(robust.mean())
    assert report.clean_accuracy == pytest.approx(clean.mean())
    # Robust accuracy never rises along the chain; the flags are the AND over the chain.
    accs = [report.clean_accuracy, *report.robust_accuracy_after.values()]
    assert all(a >= b for a, b in itertools.pairwise(accs))
    assert 0 < report.robust_accuracy < accs[1] < accs[0]  # every stage did something
    assert not (report.robust & ~report.clean).any()

    # Buckets hold only points robust before the attack (padding repeats them), in sizes
    # of the list, and every robust point of every batch is attacked exactly once.
    robust_before = clean.copy()
    for frac in CHAIN_FRACS:
        seen = []
        for f, images in spied:
            if f != frac:
                continue
            assert len(images) in CHAIN_SIZES
            ids = chain_ids(images, x)
            assert robust_before[ids].all()
            real = list(dict.fromkeys(ids.tolist()))  # first occurrences: the real rows
            seen += real
        assert sorted(seen) == np.flatnonzero(robust_before).tolist()
        robust_before &= ~((y == 0) & (t - frac * CHAIN_EPS < 0.5))

    assert report.num_examples == 45 and report.batch_size == 8
    assert report.bucket_sizes == CHAIN_SIZES
    assert report.attacks == ["shift-0", "shift-1", "shift-2"] and report.version == "custom"
    assert set(report.times) == set(report.attacks) and report.num_devices == 4
    d = json.loads(report.to_json())
    assert d["robust"] == report.robust.tolist() and "x_adv" not in d
    assert d["robust_accuracy_after"] == pytest.approx(after)
    assert d["attack_settings"]["shift-1"] == {"frac": 0.6, "noise": False}


def test_log_lines_use_the_reference_wording():
    import pyautoattack

    ref = Path(pyautoattack.__file__).with_name("autoattack.py").read_text()
    formats = {
        "initial": "initial accuracy: {:.2%}",
        "after": "robust accuracy after {}: {:.2%} (total time {:.1f} s)",
        "final": "robust accuracy: {:.2%}",
        "batch": "{} - {}/{} - {} out of {} successfully perturbed",
        "using": "using {} version including {}.",
        "max": "max {} perturbation: {:.5f}, nan in tensor: {}, max: {:.5f}, min: {:.5f}",
    }
    for fmt in formats.values():
        assert fmt in ref, fmt  # the wording below is the reference's own

    x, y, _ = chain_data(20, seed=3)
    lines = []
    report = run_chain(x, y, log=lines.append)
    assert formats["using"].format("custom", "shift-0, shift-1, shift-2") == lines[0]
    assert formats["initial"].format(report.clean_accuracy) in lines
    assert formats["final"].format(report.robust_accuracy) == lines[-1]
    after = re.compile(r"robust accuracy after (\S+): (\d+\.\d\d)% \(total time \d+\.\d s\)$")
    got = [after.match(line).groups() for line in lines if after.match(line)]
    assert got == [(k.upper(), f"{v:.2%}"[:-1]) for k, v in report.robust_accuracy_after.items()]
    batch = re.compile(r"shift-0 - (\d)/3 - (\d+) out of (\d+) successfully perturbed$")
    assert [batch.match(line).group(1) for line in lines if batch.match(line)] == ["1", "2", "3"]
    assert re.match(r"max Linf perturbation: 0\.\d{5}, nan in tensor: 0, max: ", lines[-2])


def test_no_robust_points_left_skips_the_remaining_attacks(caplog):
    x, y, t = chain_data(60, seed=4)
    keep = (t > 0.5) & (t < 0.5 + 0.9 * CHAIN_EPS)  # breakable by a full eps step
    x, y = x[keep], np.zeros(keep.sum(), np.int32)  # and all correctly classified
    chain = shift_chain(fracs=(1.0, 0.61))
    lines, toys.CHAIN_SPY = [], []
    try:
        report = run_chain(x, y, chain=chain, log=lines.append)
    finally:
        spied, toys.CHAIN_SPY = toys.CHAIN_SPY, None
    assert report.robust_accuracy == 0 and report.robust_accuracy_after == {
        "shift-0": 0.0,
        "shift-1": 0.0,
    }
    assert "no robust datapoints left, skipping remaining attacks" in lines
    assert all(f == 1.0 for f, _ in spied)  # the second attack never ran


# ------------------------------------------------------------------------- resume and state
def test_resume_after_sigkill_gives_the_uninterrupted_report(tmp_path):
    state = tmp_path / "aa_state.json"
    marker = tmp_path / "stopped"
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import toys as t
def on_progress(attack, batch, n_batches):
    if attack == "shift-1" and batch == 2:
        open({str(marker)!r}, "w").close()
        time.sleep(600)
t.resume_chain({str(state)!r}, on_progress)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, "the evaluation subprocess died before the marker"
            assert time.time() < deadline, "the evaluation subprocess made no progress"
            time.sleep(0.2)
        saved = json.loads(state.read_text())
        assert saved["batches_done"] == {"shift-0": 6, "shift-1": 3}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    lines = []
    resumed = resume_chain(state, log=lines.append)
    assert resumed.resumed
    assert "shift-0 was/were already run." in lines
    assert any(line.startswith("robust accuracy at the time of restoring") for line in lines)
    assert [line.split(" - ")[1] for line in lines if line.startswith("shift-1 - ")] == [
        "4/6",
        "5/6",
        "6/6",
    ]
    assert_same_report(resumed, resume_chain())
    # A finished state file resumes to the same report without attacking again.
    assert_same_report(resume_chain(state), resumed)


def test_interruption_between_image_and_state_writes_resumes_exactly(tmp_path, monkeypatch):
    state = tmp_path / "s.json"
    save_images = StateStore.save_images
    written = []

    def dying_save_images(self, st, *, attack, batch, indices, images):
        save_images(self, st, attack=attack, batch=batch, indices=indices, images=images)
        if attack == 1:  # the images are on disk, the state that lists them is not
            written.append(batch)
            raise ChainInterrupt("killed between the image write and the state write")

    monkeypatch.setattr(StateStore, "save_images", dying_save_images)
    with pytest.raises(ChainInterrupt):
        resume_chain(state)
    monkeypatch.setattr(StateStore, "save_images", save_images)
    saved = json.loads(state.read_text())
    assert saved["batches_done"]["shift-1"] == written[0]  # that batch is not done
    assert (tmp_path / "s.json.adv" / f"attack1_batch{written[0]}.npy").exists()
    assert not any(e["file"].startswith("attack1_") for e in saved["images"])
    # Inside an attack, before anything of its batch was saved.
    CHAIN_FAIL_AT.update(frac=1.0, call=3)
    try:
        with pytest.raises(ChainInterrupt):
            resume_chain(state)
    finally:
        CHAIN_FAIL_AT.clear()
    assert 0 < json.loads(state.read_text())["batches_done"]["shift-2"] < 6
    assert_same_report(resume_chain(state), resume_chain())


def test_a_state_file_of_another_evaluation_is_refused(tmp_path):
    x, y, _ = chain_data(24, seed=2)
    state = tmp_path / "s.json"
    run_chain(x, y, state_path=state)
    with pytest.raises(WorkdirMismatchError, match=r"different evaluation(.|\n)*eps: 0\.1 -> 0\.2"):
        AutoAttack(mean_model, eps=0.2, version=shift_chain(), bucket_sizes=CHAIN_SIZES, log=None,
                   run_checks=False).run(x, y, batch_size=8, state_path=state)  # fmt: skip
    with pytest.raises(WorkdirMismatchError, match=r"data: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run_chain(x[::-1].copy(), y[::-1].copy(), state_path=state)
    with pytest.raises(WorkdirMismatchError, match=r"batch_size: 8 -> 4"):
        run_chain(x, y, state_path=state, batch_size=4, bucket_sizes=(4,))
    with pytest.raises(WorkdirMismatchError, match=r"attacks: \["):
        run_chain(x, y, chain=shift_chain(fracs=(0.3, 0.6)), state_path=state)
    other_model = lambda v: -mean_model(v)
    with pytest.raises(WorkdirMismatchError, match=r"classifies \d+ clean points differently"):
        AutoAttack(
            other_model,
            eps=CHAIN_EPS,
            version=shift_chain(),
            bucket_sizes=CHAIN_SIZES,
            log=None,
            run_checks=False,
        ).run(x, y, batch_size=8, state_path=state)
    # Damage is not another evaluation: a lost image file is recomputed, a torn state file
    # replaced by its previous copy (tests/test_crash_campaign.py tries every kind).
    expected = run_chain(x, y)
    image = next((tmp_path / "s.json.adv").iterdir())
    image.unlink()
    assert_same_report(run_chain(x, y, state_path=state), expected)
    state.write_text("{not json")
    assert_same_report(run_chain(x, y, state_path=state), expected)


# ------------------------------------------------------------------ compilations and devices
def test_any_number_of_batches_compiles_once_per_bucket_size():
    fracs = (0.31, 0.62)  # used by no other test: their compilations are counted from zero
    for seed, n in [(5, 40), (6, 200)]:
        x, y, _ = chain_data(n, seed=seed)
        run_chain(x, y, chain=shift_chain(noise=True, fracs=fracs))
    counts = {k: v for k, v in CHAIN_TRACES.items() if k[0] in fracs}
    assert counts and all(v == 1 for v in counts.values()), counts
    assert {k[2] for k in counts} <= set(CHAIN_SIZES)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_report_on_1_and_4_devices():
    x, y, _ = chain_data(45, seed=1)
    chain = shift_chain(noise=True)
    one = run_chain(x, y, chain=chain, seed=3, mesh=make_mesh(take_devices(1)))
    four = run_chain(x, y, chain=chain, seed=3, mesh=make_mesh(take_devices(4)))
    assert (one.num_devices, four.num_devices) == (1, 4)
    assert_same_report(one, four)
    # A different seed changes the random steps, hence the result.
    other = run_chain(x, y, chain=chain, seed=4)
    assert not np.array_equal(other.x_adv, four.x_adv)


# ------------------------------------------------------------------ configuration and checks
def test_versions_are_the_reference_settings_and_capped_at_c_minus_1():
    std = dict(versions.attack_settings("standard", "Linf"))
    assert list(std) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert std["apgd-ce"]["n_restarts"] == 1 and std["apgd-t"]["n_target_classes"] == 9
    assert std["fab-t"]["n_target_classes"] == 9 and std["square"]["n_queries"] == 5000
    l1 = dict(versions.attack_settings("standard", "L1"))
    assert l1["apgd-ce"]["n_restarts"] == 5 and l1["apgd-ce"]["use_largereps"]
    assert l1["apgd-t"]["n_target_classes"] == 5
    plus = dict(versions.attack_settings("plus", "Linf"))
    assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus["apgd-dlr"]["n_restarts"] == 5
    rand = dict(versions.attack_settings("rand", "Linf"))
    assert list(rand) == ["apgd-ce", "apgd-dlr"] and rand["apgd-dlr"]["eot_iter"] == 20
    chain = versions.fit_to_classes(versions.build_chain("standard", "Linf"), 5)
    assert {s.name: s.kwargs.get("n_target_classes") for s in chain} == {
        "apgd-ce": None,
        "apgd-t": 4,
        "fab-t": 4,
        "square": None,
    }
    with pytest.raises(ValueError, match="targeted DLR"):
        versions.fit_to_classes(chain, 3)
    with pytest.raises(ValueError, match="DLR loss"):
        versions.fit_to_classes(versions.build_chain(["apgd-dlr"], "Linf"), 2)


def test_configuration_errors_are_clear():
    for norm in ("Linf", "L2", "L1"):  # every attack of every version is ported
        for version in ("standard", "plus"):
            assert AutoAttack(mean_model, eps=CHAIN_EPS, norm=norm, version=version).attacks
    with pytest.raises(ValueError, match="norm must be one of"):
        AutoAttack(mean_model, eps=CHAIN_EPS, norm="L0")
    with pytest.raises(ValueError, match="unknown attack 'pgd'"):
        AutoAttack(mean_model, eps=CHAIN_EPS, version=["apgd-ce", "pgd"])
    with pytest.raises(ValueError, match="once in a chain"):
        AutoAttack(mean_model, eps=CHAIN_EPS, version=["apgd-ce", "apgd-ce"])
    with pytest.raises(ValueError, match=r"attack_options name \['square'\]"):
        AutoAttack(mean_model, eps=CHAIN_EPS, version=["apgd-ce"], attack_options={"square": {}})
    with pytest.raises(TypeError, match="takes no \\['n_querys'\\]"):
        AutoAttack(mean_model, eps=CHAIN_EPS, attack_options={"square": {"n_querys": 10}})
    with pytest.raises(ValueError, match="cannot attack a randomized model"):
        AutoAttack(mean_model, eps=CHAIN_EPS, randomized=True)
    with pytest.raises(ValueError, match="eps must be"):
        AutoAttack(mean_model, eps=-1.0)
    x, y, _ = chain_data(8)
    with pytest.raises(ValueError, match="num_classes=3 but the model outputs 2"):
        run_chain(x, y, num_classes=3)
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        run_chain(x * 3, y)


def batch_coupled(x):
    z = mean_model(x)
    return z - z.mean(0, keepdims=True)  # each row depends on the rest of the batch


def test_checks_run_on_the_first_batch_and_flag_a_batch_coupled_judge(caplog):
    x, y, _ = chain_data(24, seed=8)
    lines = []
    with caplog.at_level("WARNING", logger="hpm_jax.autoattack"):
        report = run_chain(x, y, judge_fn=batch_coupled, run_checks=True, log=lines.append)
    by_name = {c.name: c for c in report.checks}
    assert by_name["batch_dependence"].flagged
    assert not by_name["randomized"].flagged and not by_name["softmax_output"].flagged
    assert {c.name for c in report.flagged} >= {"batch_dependence"}
    assert any("depends on the rest of the batch" in r.message for r in caplog.records)
    assert any(line.startswith("Warning: the output depends") for line in lines)
    # A plain model passes everything (Square is not in this chain: not applicable).
    plain = run_chain(x, y, run_checks=True)
    assert not plain.flagged, [c.message for c in plain.flagged]
    assert {c.name for c in plain.checks} == {
        "randomized", "softmax_output", "zero_gradients", "dynamic", "batch_dependence",
        "square", "final_reevaluation", "perturbation",
    }  # fmt: skip


# ------------------------------------------------------------------------- the real attacks
RNG = np.random.default_rng(0)
W_LIN = RNG.normal(size=(48, 10)).astype(np.float32)


def linear(x):
    return x.reshape(x.shape[0], -1) @ W_LIN


def linear_data(n, seed):
    """Points whose minimal Linf perturbation d (closed form for a linear model, the box is
    never reached) is either below 0.75 eps or above 1.33 eps; eps is the median of d."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.35, 0.65, size=(20 * n, 4, 4, 3)).astype(np.float32)
    z = x.reshape(len(x), -1).astype(np.float64) @ W_LIN.astype(np.float64)
    y = z.argmax(1)
    w = W_LIN.T.astype(np.float64)
    dist = np.full(len(x), np.inf)
    for c in range(10):
        norm1 = np.abs(w[y] - w[c]).sum(1)
        d = (z[np.arange(len(x)), y] - z[:, c]) / np.where(y == c, 1.0, norm1)
        dist = np.minimum(dist, np.where(y == c, np.inf, d))
    eps = 0.045
    keep = (dist < 0.75 * eps) | (dist > 1.33 * eps)
    return x[keep][:n], y[keep][:n].astype(np.int32), dist[keep][:n], eps


REAL_OPTIONS = {
    "apgd-ce": {"n_iter": 20, "n_restarts": 1},
    "apgd-t": {"n_iter": 20},
    "fab-t": {"n_iter": 20},
    "square": {"n_queries": 100},
}


@pytest.mark.slow
def test_standard_autoattack_breaks_exactly_the_points_below_eps_on_1_2_and_4_devices():
    """The whole standard chain on 1, 2 and 4 XLA:CPU devices: the known answer on each, and
    the same report. (On several devices APGD's host loop once queued steps whose collectives
    starved XLA:CPU's thread pool and aborted the process; it now runs them one at a time.)"""
    x, y, dist, eps = linear_data(24, seed=0)
    assert 6 <= (dist < eps).sum() <= 18  # both kinds of points are present
    reports = {}
    for n in (1, 2, 4):
        aa = AutoAttack(linear, eps=eps, attack_options=REAL_OPTIONS, bucket_sizes=(8,),
                        mesh=make_mesh(take_devices(n)), log=None)  # fmt: skip
        report = reports[n] = aa.run(x, y, batch_size=8)
        assert report.num_devices == n
        np.testing.assert_array_equal(report.robust, dist > eps)
        broken = ~report.robust
        assert (np.abs(report.x_adv - x).reshape(24, -1).max(1)[broken] <= eps + 1e-6).all()
        assert (linear(report.x_adv).argmax(1)[broken] != y[broken]).all()
        np.testing.assert_array_equal(report.x_adv[~broken], x[~broken])
        assert report.attack_settings["apgd-t"]["n_target_classes"] == 9
        assert not report.flagged, [c.message for c in report.flagged]
    for n in (2, 4):
        assert reports[n].robust_accuracy_after == reports[1].robust_accuracy_after
        np.testing.assert_array_equal(reports[n].robust, reports[1].robust)


PLUS_OPTIONS = {
    "apgd-ce": {"n_iter": 10, "n_restarts": 1},
    "apgd-dlr": {"n_iter": 10, "n_restarts": 1},
    "fab": {"n_iter": 20, "n_restarts": 2},
    "square": {"n_queries": 50},
    "apgd-t": {"n_iter": 10, "n_target_classes": 2},
    "fab-t": {"n_iter": 20, "n_target_classes": 2},
}
W_PLUS = RNG.normal(size=(5 * 5 * 2, 10)).astype(np.float32)
DUAL = {"Linf": 1, "L2": 2, "L1": np.inf}


def plus_data(n, norm, seed):
    """5x5x2 images (Square's L2 and L1 starts need 5x5) for `x @ W_PLUS`, whose minimal
    perturbation in `norm` (closed form: margin / ||w_y - w_c||_dual; the box is never
    reached) is below 0.75 eps or above 1.33 eps; eps is the median."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.35, 0.65, size=(20 * n, 5, 5, 2)).astype(np.float32)
    w = W_PLUS.astype(np.float64)
    z = x.reshape(len(x), -1).astype(np.float64) @ w
    y = z.argmax(1)
    dist = np.full(len(x), np.inf)
    for c in range(10):
        dual = np.linalg.norm(w[:, y] - w[:, [c]], DUAL[norm], axis=0)
        d = (z[np.arange(len(x)), y] - z[:, c]) / np.where(y == c, 1.0, dual)
        dist = np.minimum(dist, np.where(y == c, np.inf, d))
    eps = float(np.median(dist[:n]))
    keep = (dist < 0.75 * eps) | (dist > 1.33 * eps)
    return x[keep][:n], y[keep][:n].astype(np.int32), dist[keep][:n], eps


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_plus_runs_for_every_norm_and_breaks_exactly_the_points_below_eps(norm):
    x, y, dist, eps = plus_data(16, norm, seed=4)
    assert 4 <= (dist < eps).sum() <= 12
    # Pixels have room >= 0.35 both ways, so no minimal perturbation (L1: one pixel) hits the box.
    assert np.all(dist[dist < eps] < 0.3)

    def model(v):
        return v.reshape(v.shape[0], -1) @ W_PLUS

    aa = AutoAttack(model, norm=norm, eps=eps, version="plus", attack_options=PLUS_OPTIONS,
                    bucket_sizes=(8,), log=None)  # fmt: skip
    report = aa.run(x, y, batch_size=8)
    assert report.attacks == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    np.testing.assert_array_equal(report.robust, dist > eps)
    broken = ~report.robust
    norms = np.linalg.norm(
        (report.x_adv - x).reshape(16, -1), {"Linf": np.inf, "L2": 2, "L1": 1}[norm], axis=1
    )
    assert np.all(norms[broken] <= eps * (1 + 1e-5) + 1e-6)
    assert (model(report.x_adv).argmax(1)[broken] != y[broken]).all()
    np.testing.assert_array_equal(report.x_adv[~broken], x[~broken])
    assert report.attack_settings["fab"]["n_restarts"] == 2


APGD_CE = {"apgd-ce": {"n_iter": 20, "n_restarts": 1}}  # as REAL_OPTIONS: shared programs


def _real_apgd_ce(x, y, eps, mesh=None):
    aa = AutoAttack(linear, eps=eps, version=["apgd-ce"], attack_options=APGD_CE, log=None,
                    run_checks=False, bucket_sizes=CHAIN_SIZES, mesh=mesh, seed=1)  # fmt: skip
    return aa.run(x, y, batch_size=8)


def _with_correct_counts(counts, seed):
    """Linear-model data in batches of 8 where batch b has counts[b] correct labels."""
    x, y, _, eps = linear_data(8 * len(counts), seed=seed)
    y = y.copy()
    for b, k in enumerate(counts):  # wrong labels leave k robust points in batch b
        y[8 * b + k : 8 * (b + 1)] = (y[8 * b + k : 8 * (b + 1)] + 1) % 10
    return x, y, eps


@pytest.mark.slow
def test_real_attacks_do_not_recompile_for_more_batches_and_agree_on_1_and_4_devices():
    _real_apgd_ce(*_with_correct_counts([8, 3], seed=1))  # compiles both bucket sizes
    compiles = []
    listener = lambda event, duration, fun_name="", **kw: compiles.append((event, fun_name))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        x, y, eps = _with_correct_counts([8, 1, 4, 6, 2, 8, 5, 3], seed=2)
        four = _real_apgd_ce(x, y, eps)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert four.clean_accuracy == pytest.approx(37 / 64)
    assert not [c for c in compiles if c[0] == "/jax/core/compile/backend_compile_duration"]
    assert 0 < four.robust_accuracy < four.clean_accuracy
    one = _real_apgd_ce(x, y, eps, mesh=make_mesh(take_devices(1)))
    assert_same_report(one, four)


def noisy_linear(x, key):
    """A randomized model, called as f(x, key) by the rand version."""
    return linear(x + 0.01 * jax.random.normal(key, x.shape))


@pytest.mark.slow
def test_a_randomized_model_runs_with_keys_from_the_seed_and_resumes(tmp_path):
    x, y, _, eps = linear_data(16, seed=3)
    options = {"apgd-ce": {"n_iter": 5, "eot_iter": 2}}

    def evaluate(seed, state_path=None):
        aa = AutoAttack(noisy_linear, eps=eps, version=["apgd-ce"], randomized=True, seed=seed,
                        attack_options=options, bucket_sizes=(8,), log=None)  # fmt: skip
        return aa.run(x, y, batch_size=8, state_path=state_path)

    report = evaluate(0, tmp_path / "s.json")
    assert report.attack_settings["apgd-ce"]["randomized"] is True
    names = {c.name for c in report.checks}
    assert "randomized" not in names and "batch_dependence" not in names  # not applicable
    assert report.robust_accuracy < report.clean_accuracy
    assert_same_report(evaluate(0), report)  # the seed fixes every draw
    assert_same_report(evaluate(0, tmp_path / "s.json"), report)
    with pytest.raises(ValueError, match="cannot attack a randomized model"):
        AutoAttack(noisy_linear, eps=eps, version=["apgd-ce", "square"], randomized=True)
