"""Does this directory (or state file) belong to this run? One check for every place a run
resumes: training checkpoints, an evaluation's workdir, a study point, an attack's state.

    from hpm_jax.runtime.identity import WorkdirMismatchError, check_identity

    check_identity(stored, current,                       # the record written the first time
                   what=f"{workdir} holds an evaluation with other settings",
                   fix="Pass --overwrite to discard it, or another --workdir.")
    # WorkdirMismatchError: <what> (settings.eps: 0.1 -> 0.05); <fix>

The records are plain JSON values (nested dicts compare key by key, tuples as lists: what a
record read back from JSON holds). Each differing key is named as `dotted.key: stored ->
current`; a key only one record has shows `<absent>` on the other side, or is ignored with
`shared_only=True` (a knob added by a newer hpm-jax, whose default keeps the old behaviour).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ABSENT = "<absent>"


class WorkdirMismatchError(ValueError):
    """A directory or state file holds another run's work (other model, data or settings):
    resuming from it would mix two runs. The message names the differing keys and the fix."""


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def differences(stored: Any, current: Any, *, shared_only: bool = False) -> list[str]:
    """`key: stored -> current` for every (dotted, nested) key whose values differ."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys = set(a) & set(b) if shared_only else set(a) | set(b)
            for key in sorted(keys, key=str):
                walk(a.get(key, ABSENT), b.get(key, ABSENT), f"{prefix}{key}.")
        elif a != b:
            shown = [v if isinstance(v, str) and v == ABSENT else repr(v) for v in (a, b)]
            out.append(f"{prefix[:-1] or 'identity'}: {shown[0]} -> {shown[1]}")

    walk(_plain(stored), _plain(current), "")
    return out


def check_identity(
    stored: Any,
    current: Any,
    *,
    what: str,
    fix: str,
    shared_only: bool = False,
    inline: int | None = None,
) -> None:
    """Raise WorkdirMismatchError when `stored` and `current` differ: `what`, the differing
    keys (one a line; with `inline=N`, the first N in parentheses on one line), then `fix`."""
    changed = differences(stored, current, shared_only=shared_only)
    if not changed:
        return
    if inline is not None:
        shown = "; ".join(changed[:inline]) + ("; ..." if len(changed) > inline else "")
        raise WorkdirMismatchError(f"{what} ({shown}); {fix}")
    raise WorkdirMismatchError(f"{what}:\n  " + "\n  ".join(changed) + f"\n{fix}")
