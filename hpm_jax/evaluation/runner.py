"""The attacks of one evaluation, each a resumable section of its workdir, run batch by batch.

    runner = AttackRunner(ev, x, y, workdir, log)          # ev: evaluate.evaluation_config
    row = runner.autoattack("autoattack_fc", fn)           # WORKDIR/state/autoattack_fc/
    row = runner.msa("msa_hpm", target, {"fc": fc, "ste": ste})
    correct = clean_accuracy(fn, x, y, batch_size, mesh)   # per sample, the fixed batches

Each section runs its attack on each fixed batch on its own (`batches.run_by_batches`): the
batches are shared out over the processes of a multi-host run (`processes`), each on its own
devices, or with `evaluation.batch_sharding="global"` every batch runs over all devices of
all processes, attacked by all together; each batch's result and resume state are files of
WORKDIR/state/NAME/ (a killed evaluation started again, with any number of processes and in
either mode, continues there). The merged report equals one run over all the data. The writer
(process 0) saves x_adv and the per-sample robust flags in WORKDIR/adversarial/NAME.npz; every
process returns the report entry without per-sample lists. The clean accuracies run on the
attacks' mesh too (`AttackRunner.clean_accuracy`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hpm_jax.attacks import AutoAttack, batching, contract, mixed_surrogate_attack, versions
from hpm_jax.attacks.resume import StateStore
from hpm_jax.evaluation.batches import BatchResults, merge_autoattack, merge_msa, run_by_batches
from hpm_jax.evaluation.processes import Processes
from hpm_jax.evaluation.workdir import ADV_DIR, STATE_DIR
from hpm_jax.runtime import integrity, sharding
from hpm_jax.runtime.xla_options import jit


def clean_accuracy(
    fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int, mesh: Mesh | None = None
) -> np.ndarray:
    """Per-sample correctness of `fn` on the fixed batches (the last one as it is), each on
    `mesh` (split over its devices, or replicated where it does not split evenly; a mesh over
    several processes' devices too) or, without one, on jax's default device."""
    fn = contract.traced(fn if mesh is None else contract.place(fn, mesh))
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if mesh is not None:
            xb = sharding.put(xb, sharding.rows_sharding(len(xb), mesh))
        out.append(batching.to_host(_predict(fn, xb)) == y[i : i + batch_size])
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


def _autoattack_entry(report: dict[str, Any]) -> dict[str, Any]:
    d = _strip(report)
    d["flagged"] = _flags(d["checks"])
    return d


def _msa_entry(report: dict[str, Any]) -> dict[str, Any]:
    d = _strip(report)
    d["flagged"] = _flags(d["chain"]["checks"])
    d["attack_settings"] = d["chain"]["attack_settings"]
    d["times"] = d["chain"]["times"]
    return d


class AttackRunner:
    """Runs the sections of one evaluation batch by batch, each with its files, saving x_adv.
    `processes`: this process's share in a multi-host run and how a batch is placed (default:
    this process alone); the mesh of every attack is `processes.mesh()`."""

    def __init__(self, ev, x, y, workdir: str, log, processes: Processes | None = None, *,
                 logit_tolerance: float | None = None):  # fmt: skip
        self.ev, self.x, self.y, self.workdir, self.log = ev, x, y, workdir, log
        self.processes = Processes.current() if processes is None else processes
        self.mesh = self.processes.mesh()
        # evaluation.loop and evaluation.precision for every attack; the tolerance of its near
        # ties (None: the attacks derive it from the precision and the backend).
        self.settings = {"loop": str(ev.loop), "precision": str(ev.precision),
                         "logit_tolerance": logit_tolerance}  # fmt: skip
        self.seconds: dict[str, float] = {}

    def clean_accuracy(self, fn: Callable) -> np.ndarray:
        """Per-sample correctness of `fn` on the fixed batches, on the attacks' mesh."""
        return clean_accuracy(fn, self.x, self.y, int(self.ev.batch_size), self.mesh)

    def _store(self, state_path: str, log: Callable[[str], Any]) -> StateStore:
        """The attack state of one batch: written by the process(es) that write the batch's
        files, read by all; in global mode, no process goes on from `load` before every
        process has read the files."""

        def loaded() -> None:
            self.processes.barrier("hpm_jax.evaluate: attack state read")

        return StateStore(state_path, log=lambda line: log(f"Warning: {line}"),
                          write=self.processes.writes_batches,
                          loaded=loaded if self.processes.is_global else None)  # fmt: skip

    def _save(self, name: str, x_adv: np.ndarray, robust: list[bool]) -> None:
        # Atomic: a kill leaves the old file or the new one. A zip checks itself (its
        # directory is at the end, a CRC per member), so no checksum is added.
        if not self.processes.writer:
            return
        path = os.path.join(self.workdir, ADV_DIR, f"{name}.npz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with integrity.atomic_file(path) as f:
            np.savez_compressed(f, x_adv=x_adv, robust=np.asarray(robust, bool))

    def _options(self, attacks: str | list[str]) -> dict[str, Any]:
        opts = _plain(self.ev.attack_options)
        if isinstance(attacks, str):
            return opts
        return {k: v for k, v in opts.items() if k in attacks}

    def _section(self, name: str, attack, merge) -> dict[str, Any]:
        """`attack(x_b, y_b, first_batch, state_path, log, run_checks)` on this process's
        batches, the results of all merged; x_adv saved; the merged report returned."""
        batch_size, t0 = int(self.ev.batch_size), time.perf_counter()
        n_batches = -(-len(self.x) // batch_size)

        def one_batch(xb, yb, *, first_batch, **kwargs):
            tag = f"[{name} batch {first_batch + 1}/{n_batches}]"
            return attack(xb, yb, first_batch=first_batch,
                          log=lambda line: self.log(f"{tag} {line}"), **kwargs)  # fmt: skip

        results = BatchResults(os.path.join(self.workdir, STATE_DIR, name))
        bars = []

        def on_batch(done: int, total: int) -> None:  # first call: before the first batch
            if not bars:
                bars.append(self.log.bar(name, total, initial=done))
            bars[0].set(done, total=total)

        try:
            report, x_adv, _ = run_by_batches(
                one_batch, self.x, self.y, batch_size, results, self.processes, merge,
                log=self.log, on_batch=on_batch,
            )  # fmt: skip
        finally:
            for bar in bars:
                bar.close()
        self.seconds[name] = time.perf_counter() - t0
        self._save(name, x_adv, report["robust"])
        chain = report.get("chain", report)
        summary = ", ".join(f"after {a.upper()}: {v:.2%}"
                            for a, v in chain["robust_accuracy_after"].items())  # fmt: skip
        self.log(f"[evaluate] {name}, all {n_batches} batches: initial accuracy: "
                 f"{chain['clean_accuracy']:.2%}; robust accuracy {summary}; robust accuracy: "
                 f"{report['robust_accuracy']:.2%}")  # fmt: skip
        return report

    def autoattack(self, name: str, fn, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] AutoAttack on {name}")
        fn = contract.place(fn, self.mesh)  # the weights on this process's devices, once

        def attack(xb, yb, *, first_batch, state_path, log, run_checks):
            report = AutoAttack(
                fn,
                norm=self.ev.norm,
                eps=self.ev.eps if eps is None else eps,
                version=version,
                seed=int(self.ev.seed),
                attack_options=self._options(version),
                mesh=self.mesh,
                run_checks=run_checks and bool(self.ev.run_checks),
                log=log,
                **self.settings,
            ).run(xb, yb, batch_size=int(self.ev.batch_size),
                  state_path=self._store(state_path, log), first_batch=first_batch)  # fmt: skip
            return report.to_dict(), report.x_adv

        return _autoattack_entry(self._section(name, attack, merge_autoattack))

    def msa(self, name: str, target, surrogates, *, version=None, eps=None) -> dict[str, Any]:
        version = attack_list(self.ev.version if version is None else version)
        self.log(f"[evaluate] MSA on {name} through {', '.join(surrogates)}")
        memo: dict = {}  # the weights placed on this process's devices once, not per batch
        target = contract.place(target, self.mesh, memo)
        surrogates = {s: contract.place(fn, self.mesh, memo) for s, fn in surrogates.items()}

        def attack(xb, yb, *, first_batch, state_path, log, run_checks):
            report = mixed_surrogate_attack(
                target,
                surrogates,
                xb,
                yb,
                norm=self.ev.norm,
                eps=self.ev.eps if eps is None else eps,
                batch_size=int(self.ev.batch_size),
                version=version,
                seed=int(self.ev.seed),
                attack_options=self._options(version),
                state_path=self._store(state_path, log),
                mesh=self.mesh,
                run_checks=run_checks and bool(self.ev.run_checks),
                log=log,
                **self.settings,
                first_batch=first_batch,
            )
            return report.to_dict(), report.x_adv

        return _msa_entry(self._section(name, attack, merge_msa))


def attack_list(version: Any) -> str | list[str]:
    """A version name as it is; "a,b" or a sequence of attack names as a list of names."""
    if isinstance(version, str):
        if version in versions.VERSIONS:
            return version
        return [v.strip() for v in version.split(",") if v.strip()]
    return [str(v) for v in version]


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
