"""The resumable state of an AutoAttack run: a JSON file plus the adversarial images beside it.

    store = StateStore("eval/aa_state.json")
    state = store.load(fingerprint)          # None when absent; StateMismatchError when the
                                             # file belongs to another evaluation
    state = ChainState.new(fingerprint, clean=flags)
    store.save_images(state, attack=0, batch=3, indices=ids, images=x_adv[ids])
    state.batches_done["apgd-ce"] = 4
    store.save(state)                        # atomic: temp file + os.replace
    x_adv = store.load_images(state, x)      # x with every saved adversarial image put back

The JSON holds the fingerprint of the evaluation (data hash and configuration), the clean and
current per-sample robust flags, the number of batches done per attack, the accuracies and
times, and the list of saved image files. Each (attack, batch) that broke points writes one
`.npy` of just those images into the directory `<state>.adv/` (written atomically, before the
JSON that lists it), so a save costs the new adversarial images, never the whole dataset.
A kill at any moment leaves a JSON that lists only complete files; the (attack, batch) that
was running is redone on resume, with the same randomness, so the result is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "hpm_jax.autoattack/1"


class StateMismatchError(ValueError):
    """The state file was written by a different evaluation (data, model or configuration)."""


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


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same directory and os.replace it into place, so the
    file is either the old one or the complete new one, never half written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mismatches(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: state file has {stored.get(k)!r}, this run has {current.get(k)!r}"
        for k in keys
        if stored.get(k) != current.get(k)
    ]


class StateStore:
    """Reads and writes one evaluation's state at `path` (JSON) and `<path>.adv/` (images)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.image_dir = Path(str(self.path) + ".adv")

    def load(self, fingerprint: Mapping[str, Any]) -> ChainState | None:
        """The saved state, or None when there is none. Raises StateMismatchError naming the
        differences when the file belongs to another evaluation."""
        if not self.path.exists():
            return None
        try:
            d = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StateMismatchError(
                f"the AutoAttack state file {self.path} cannot be read ({e}); delete it to "
                "start the evaluation afresh."
            ) from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StateMismatchError(
                f"{self.path} is not an hpm_jax AutoAttack state file (format "
                f"{d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r}); "
                "pass another state_path or delete the file."
            )
        # JSON turns tuples into lists; compare in that form.
        current = json.loads(json.dumps(dict(fingerprint)))
        problems = _mismatches(d["fingerprint"], current)
        if problems:
            raise StateMismatchError(
                f"the AutoAttack state file {self.path} belongs to a different evaluation, so "
                "resuming from it would give a wrong result:\n  "
                + "\n  ".join(problems)
                + "\nPass the same data and settings, or another state_path, or delete the file."
            )
        return ChainState.from_json(d)

    def save(self, state: ChainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(state.to_json(), indent=1).encode()
        _atomic_write(self.path, lambda f: f.write(text))

    def save_images(
        self, state: ChainState, *, attack: int, batch: int, indices: np.ndarray, images
    ) -> None:
        """Write the adversarial images of the points broken by (attack, batch) and list them
        in `state` (which the next `save` then records). Call before `save`."""
        indices = np.asarray(indices, np.int64)
        if indices.size == 0:
            return
        self.image_dir.mkdir(parents=True, exist_ok=True)
        name = f"attack{attack}_batch{batch}.npy"
        images = np.ascontiguousarray(images)
        _atomic_write(self.image_dir / name, lambda f: np.save(f, images, allow_pickle=False))
        state.images.append({"file": name, "indices": indices.tolist()})

    def load_images(self, state: ChainState, x: np.ndarray) -> np.ndarray:
        """x with the saved adversarial images put back at their indices."""
        x_adv = np.array(x, copy=True)
        for entry in state.images:
            file = self.image_dir / entry["file"]
            if not file.exists():
                raise StateMismatchError(
                    f"{file}, listed in the state file {self.path}, is missing; the state "
                    "cannot be restored. Delete the state file to start afresh."
                )
            images = np.load(file, allow_pickle=False)
            indices = np.asarray(entry["indices"], np.int64)
            if images.shape != (indices.size, *x.shape[1:]) or images.dtype != x.dtype:
                raise StateMismatchError(
                    f"{file} holds {images.dtype}{images.shape}, expected "
                    f"{x.dtype}{(indices.size, *x.shape[1:])}; the state directory is "
                    "inconsistent. Delete the state file and its .adv directory to start afresh."
                )
            if state.robust[indices].any():
                raise StateMismatchError(
                    f"{file} holds images of points the state file {self.path} marks robust; "
                    "the state is inconsistent. Delete it to start afresh."
                )
            x_adv[indices] = images
        return x_adv
