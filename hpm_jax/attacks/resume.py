"""The resumable state of an AutoAttack run: a JSON file plus the adversarial images beside it.

    store = StateStore("eval/aa_state.json", log=print)
    state = store.load(fingerprint)          # None when absent; WorkdirMismatchError when the
                                             # file belongs to another evaluation
    state = ChainState.new(fingerprint, clean=flags)
    store.save_images(state, attack=0, batch=3, indices=ids, images=x_adv[ids])
    state.batches_done["apgd-ce"] = 4
    store.save(state)                        # atomic: temp file, fsync, os.replace
    x_adv = store.load_images(state, x)      # x with every saved adversarial image put back
    store.recompute_damaged(state, x_adv, compute)   # the batches whose images were damaged

The JSON holds the fingerprint of the evaluation (data hash and configuration), the clean and
current per-sample robust flags, the number of batches done per attack, the accuracies and
times, and the list of saved image files with their sha256. Each (attack, batch) that broke
points writes one `.npy` of just those images into the directory `<state>.adv/` (written
atomically, before the JSON that lists it), so a save costs the new adversarial images, never
the whole dataset. A kill at any moment leaves a JSON that lists only complete files; the
(attack, batch) that was running is redone on resume, with the same randomness, so the
result is unchanged.

Damage from outside (a disk or copy fault, a partial sync, a hand edit) is told apart by
checksums (`runtime.integrity`) and named in one line to `log`: an image file is a cache, so
`load_images` sets its entry aside (`state.damaged`) and `recompute_damaged` runs that one
(attack, batch) again; a damaged JSON falls back to `<state>.prev`, the copy saved one batch
earlier (that batch is then redone); with neither readable the attack starts afresh.

Several processes attacking one batch together (an evaluation with
`evaluation.batch_sharding="global"`) each hold a store of the same files: one writes
(`write=True`), the others only read (`write=False`: every save is skipped, the state in
memory is kept the same), and `loaded` (a barrier) returns from `load` only once every
process has read the files, so that no process resumes from a state another has already
moved on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpm_jax.runtime import integrity
from hpm_jax.runtime.identity import WorkdirMismatchError, check_identity

FORMAT = "hpm_jax.autoattack/1"


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the images and labels, with their shapes and dtypes."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _flags_to_str(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in np.asarray(flags, bool).tolist())


def _flags_from_str(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8) == ord("1")


@dataclasses.dataclass
class ChainState:
    """Where an evaluation stands. `robust` starts as `clean` and only loses points."""

    fingerprint: dict[str, Any]
    clean: np.ndarray
    robust: np.ndarray
    batches_done: dict[str, int] = dataclasses.field(default_factory=dict)
    accuracy_after: dict[str, float] = dataclasses.field(default_factory=dict)
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resumed: bool = False
    # Entries of `images` whose files were found damaged (`load_images`): to recompute.
    damaged: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def new(cls, fingerprint: Mapping[str, Any], clean: np.ndarray) -> ChainState:
        clean = np.asarray(clean, bool)
        return cls(fingerprint=dict(fingerprint), clean=clean.copy(), robust=clean.copy())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "clean": _flags_to_str(self.clean),
            "robust": _flags_to_str(self.robust),
            "batches_done": self.batches_done,
            "accuracy_after": self.accuracy_after,
            "times": self.times,
            "images": self.images,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChainState:
        return cls(
            fingerprint=d["fingerprint"],
            clean=_flags_from_str(d["clean"]),
            robust=_flags_from_str(d["robust"]),
            batches_done={k: int(v) for k, v in d["batches_done"].items()},
            accuracy_after={k: float(v) for k, v in d["accuracy_after"].items()},
            times={k: float(v) for k, v in d["times"].items()},
            images=list(d["images"]),
            resumed=True,
        )


_IMAGE_FILE = re.compile(r"^attack(\d+)_batch(\d+)\.npy$")


def _entry_ids(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(attack, batch) of an image entry (entries written before they were recorded: from
    the file name)."""
    if "attack" in entry:
        return int(entry["attack"]), int(entry["batch"])
    match = _IMAGE_FILE.match(entry["file"])
    if match is None:
        raise WorkdirMismatchError(f"image entry {entry['file']!r} names no attack and batch.")
    return int(match.group(1)), int(match.group(2))


Compute = Callable[[int, int, np.ndarray], tuple[np.ndarray, np.ndarray]]


class StateStore:
    """Reads and writes one evaluation's state at `path` (JSON) and `<path>.adv/` (images).
    `log` receives the one-line notes on damaged files (default: the `hpm_jax.autoattack`
    logger's warnings). `write=False`: a reader of files another process writes (nothing is
    written, the state in memory is updated all the same); `loaded`: called at the end of
    every `load` (a barrier of the processes sharing the files; see the module)."""

    def __init__(
        self,
        path: str | os.PathLike,
        log: Callable[[str], Any] | None = None,
        *,
        write: bool = True,
        loaded: Callable[[], Any] | None = None,
    ):
        self.path = Path(path)
        self.prev = Path(str(self.path) + ".prev")
        self.image_dir = Path(str(self.path) + ".adv")
        self.log = log or logging.getLogger("hpm_jax.autoattack").warning
        self.write, self.loaded = bool(write), loaded

    def load(self, fingerprint: Mapping[str, Any]) -> ChainState | None:
        """The saved state, or None when there is none (or no undamaged copy: named in one
        line). Raises WorkdirMismatchError naming the differences when the file belongs to
        another evaluation."""
        try:
            return self._load(fingerprint)
        finally:
            if self.loaded is not None:
                self.loaded()

    def _load(self, fingerprint: Mapping[str, Any]) -> ChainState | None:
        found = False
        for candidate in (self.path, self.prev):
            if not candidate.exists():
                continue
            found = True
            try:
                d = integrity.read_json(candidate)
            except (OSError, integrity.DamagedFileError) as e:
                self.log(f"{candidate} is damaged ({getattr(e, 'reason', e)}); not used.")
                continue
            state = self._check(candidate, d, fingerprint)
            if candidate == self.prev:
                # The next save must not move the damaged copy over this good one.
                if self.write:
                    self.path.unlink(missing_ok=True)
                self.log(f"resuming from {self.prev}, saved a batch earlier: that batch is redone.")
            return state
        if found:
            self.log(f"no undamaged copy of {self.path}: this attack starts afresh.")
        return None

    def _check(self, path: Path, d: dict[str, Any], fingerprint) -> ChainState:
        if d.get("format") != FORMAT:
            raise WorkdirMismatchError(
                f"{path} is not an hpm_jax AutoAttack state file (format {d.get('format')!r}, "
                f"expected {FORMAT!r}); pass another state_path or delete the file."
            )
        # JSON turns tuples into lists; compare in that form.
        current = json.loads(json.dumps(dict(fingerprint)))
        check_identity(
            d["fingerprint"],
            current,
            what=f"the AutoAttack state file {path} belongs to a different evaluation, so "
            "resuming from it would give a wrong result",
            fix="Pass the same data and settings, or another state_path, or delete the file.",
        )
        return ChainState.from_json(d)

    def save(self, state: ChainState) -> None:
        """Write `state` atomically, the copy it replaces kept as `<path>.prev`."""
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        integrity.write_json(self.path, state.to_json(), previous=self.prev)

    def save_images(
        self, state: ChainState, *, attack: int, batch: int, indices: np.ndarray, images
    ) -> None:
        """Write the adversarial images of the points broken by (attack, batch) and list them
        in `state` (which the next `save` then records). Call before `save`."""
        indices = np.asarray(indices, np.int64)
        if indices.size == 0:
            return
        name = f"attack{attack}_batch{batch}.npy"
        data = integrity.npy_bytes(images)
        if self.write:
            self.image_dir.mkdir(parents=True, exist_ok=True)
            digest = integrity.write_bytes(self.image_dir / name, data)
        else:  # the entry the writer lists
            digest = hashlib.sha256(data).hexdigest()
        state.images.append({"file": name, "attack": int(attack), "batch": int(batch),
                             "indices": indices.tolist(), "sha256": digest})  # fmt: skip

    def _read_images(self, entry: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
        """The images of one entry; DamagedFileError when missing, torn or not as listed."""
        file = self.image_dir / entry["file"]
        if not file.exists():
            raise integrity.DamagedFileError(file, "missing")
        raw = file.read_bytes()
        if "sha256" in entry and hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise integrity.DamagedFileError(file, "its sha256 differs from the state file's")
        try:
            images = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise integrity.DamagedFileError(file, f"not a .npy file: {e}") from None
        n = len(entry["indices"])
        if images.shape != (n, *x.shape[1:]) or images.dtype != x.dtype:
            raise integrity.DamagedFileError(
                file, f"holds {images.dtype}{images.shape}, expected {x.dtype}{(n, *x.shape[1:])}"
            )
        return images

    def load_images(self, state: ChainState, x: np.ndarray) -> np.ndarray:
        """x with the saved adversarial images put back at their indices. A damaged image
        file is named in one line and its entry moved to `state.damaged` (its points keep
        their clean images until `recompute_damaged`)."""
        x_adv = np.array(x, copy=True)
        for entry in list(state.images):
            indices = np.asarray(entry["indices"], np.int64)
            if state.robust[indices].any():
                raise WorkdirMismatchError(
                    f"{self.image_dir / entry['file']} holds images of points the state file "
                    f"{self.path} marks robust; the state is inconsistent. Delete it to start "
                    "afresh."
                )
            try:
                x_adv[indices] = self._read_images(entry, x)
            except integrity.DamagedFileError as e:
                attack, batch = _entry_ids(entry)
                self.log(f"{e.path} is damaged ({e.reason}); a cache: batch {batch} of attack "
                         f"{attack} is recomputed.")  # fmt: skip
                state.images.remove(entry)
                state.damaged.append(entry)
        return x_adv

    def recompute_damaged(self, state: ChainState, x_adv: np.ndarray, compute: Compute) -> None:
        """Run each (attack, batch) whose images were damaged again and save them.
        `compute(attack, batch, robust)` attacks that batch as the chain did, with `robust`
        the per-sample flags before it, and returns (indices broken, their images)."""
        for entry in list(state.damaged):
            attack, batch = _entry_ids(entry)
            # The batch's flags before (attack, batch): points that attack or a later one broke
            # there were robust then.
            robust = state.robust.copy()
            for other in [entry, *state.images]:
                a, b = _entry_ids(other)
                if b == batch and a >= attack:
                    robust[np.asarray(other["indices"], np.int64)] = True
            broken, images = compute(attack, batch, robust)
            broken = np.asarray(broken, np.int64)
            if sorted(broken.tolist()) != sorted(entry["indices"]):
                raise WorkdirMismatchError(
                    f"recomputing batch {batch} of attack {attack} broke other points than "
                    f"{self.path} records (the model or attack is not deterministic here), so "
                    "the damaged images cannot be restored; delete that state file to run this "
                    "attack afresh."
                )
            x_adv[broken] = images
            state.damaged.remove(entry)
            self.save_images(state, attack=attack, batch=batch, indices=broken, images=images)
            self.save(state)
