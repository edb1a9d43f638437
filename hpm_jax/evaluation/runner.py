"""The attacks of one evaluation, each a resumable section of its workdir.

    runner = AttackRunner(ev, x, y, workdir, log)          # ev: evaluate.evaluation_config
    row = runner.autoattack("autoattack_fc", fn)           # WORKDIR/state/autoattack_fc.json
    row = runner.msa("msa_hpm", target, {"fc": fc, "ste": ste})
    correct = clean_accuracy(fn, x, y, batch_size)         # per sample, the fixed batches

Each section keeps its attack's resume state in WORKDIR/state/NAME.json (a killed evaluation
started again continues there) and saves x_adv and the per-sample robust flags in
WORKDIR/adversarial/NAME.npz; it returns the report entry without per-sample lists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from hpm_jax.attacks import AutoAttack, contract, mixed_surrogate_attack, versions
from hpm_jax.evaluation.workdir import ADV_DIR, STATE_DIR
from hpm_jax.runtime import integrity
from hpm_jax.runtime.xla_options import jit


def clean_accuracy(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-sample correctness of `fn` on the fixed batches (the last one as it is)."""
    fn = contract.traced(fn)
    out = [
        np.asarray(_predict(fn, x[i : i + batch_size])) == y[i : i + batch_size]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


@jit
def _predict(fn, x):
    return jnp.argmax(fn(x), axis=-1)


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    """A report dict without per-sample lists (they go to adversarial/*.npz)."""
    out = {k: v for k, v in d.items() if k not in ("robust", "clean")}
    if "chain" in out:
        out["chain"] = _strip(out["chain"])
    return out


def _flags(checks: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in checks if c["flagged"]]


def _autoattack_entry(report) -> dict[str, Any]:
    d = _strip(report.to_dict())
    d["flagged"] = _flags(d["checks"])
    return d


def _msa_entry(report) -> dict[str, Any]:
    d = _strip(report.to_dict())
    d["flagged"] = _flags(d["chain"]["checks"])
    d["attack_settings"] = d["chain"]["attack_settings"]
    d["times"] = d["chain"]["times"]
    return d


class AttackRunner:
    """Runs the sections of one evaluation, each with its state file, saving x_adv."""

    def __init__(self, ev, x, y, workdir: str, log, *, logit_tolerance: float | None = None):
        self.ev, self.x, self.y, self.workdir, self.log = ev, x, y, workdir, log
        # evaluation.precision for every attack; the tolerance of its near ties (None: the
        # attacks derive it from the precision and the backend).
        self.precision = {"precision": str(ev.precision), "logit_tolerance": logit_tolerance}
        os.makedirs(os.path.join(workdir, STATE_DIR), exist_ok=True)
        os.makedirs(os.path.join(workdir, ADV_DIR), exist_ok=True)
        self.seconds: dict[str, float] = {}

    def _state(self, name: str) -> str:
        return os.path.join(self.workdir, STATE_DIR, f"{name}.json")

    def _save(self, name: str, x_adv: np.ndarray, robust: np.ndarray) -> None:
        # Atomic: a kill leaves the old file or the new one. A zip checks itself (its
        # directory is at the end, a CRC per member), so no checksum is added.
        path = os.path.join(self.workdir, ADV_DIR, f"{name}.npz")
        with integrity.atomic_file(path) as f:
            np.savez_compressed(f, x_adv=x_adv, robust=np.asarray(robust, bool))

    def _options(self, attacks: str | list[str]) -> dict[str, Any]:
        opts = _plain(self.ev.attack_options)
        if isinstance(attacks, str):
            return opts
        return {k: v for k, v in opts.items() if k in attacks}

    def autoattack(self, name: str, fn, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] AutoAttack on {name}")
        t0 = time.perf_counter()
        with self.log.section(name) as on_progress:
            report = self._autoattack(fn, version, eps, name, on_progress)
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _autoattack_entry(report)

    def _autoattack(self, fn, version, eps, name, on_progress):
        return AutoAttack(
            fn,
            norm=self.ev.norm,
            eps=self.ev.eps if eps is None else eps,
            version=version,
            seed=int(self.ev.seed),
            attack_options=self._options(version),
            loop=str(self.ev.loop),
            run_checks=bool(self.ev.run_checks),
            log=self.log,
            on_progress=on_progress,
            **self.precision,
        ).run(self.x, self.y, batch_size=int(self.ev.batch_size), state_path=self._state(name))

    def msa(self, name: str, target, surrogates, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] MSA on {name} through {', '.join(surrogates)}")
        t0 = time.perf_counter()
        with self.log.section(name, line_progress=True):  # MSA takes no progress hook
            report = self._msa(target, surrogates, version, eps, name)
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, report.x_adv, report.robust)
        return _msa_entry(report)

    def _msa(self, target, surrogates, version, eps, name):
        return mixed_surrogate_attack(
            target,
            surrogates,
            self.x,
            self.y,
            norm=self.ev.norm,
            eps=self.ev.eps if eps is None else eps,
            batch_size=int(self.ev.batch_size),
            version=version,
            seed=int(self.ev.seed),
            attack_options=self._options(version),
            state_path=self._state(name),
            loop=str(self.ev.loop),
            run_checks=bool(self.ev.run_checks),
            log=self.log,
            **self.precision,
        )


def attack_list(version: Any) -> str | list[str]:
    """A version name as it is; "a,b" or a sequence of attack names as a list of names."""
    if isinstance(version, str):
        if version in versions.VERSIONS:
            return version
        return [v.strip() for v in version.split(",") if v.strip()]
    return [str(v) for v in version]


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
