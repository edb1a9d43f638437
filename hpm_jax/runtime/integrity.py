"""Files a run resumes from: written atomically, read back checked.

    write_json(path, {"step": 3})                      # temp file, fsync, os.replace; checksum
    record = read_json(path)                           # DamagedFileError when torn or edited
    digest = write_bytes(path, data)                   # atomic; returns the sha256 of data
    with atomic_file(path) as f:                       # any writer (np.save, np.savez, ...)
        np.save(f, x)

A file written here is, at every moment, either its old complete copy or its new complete
copy: the new bytes go to a temp file in the same directory, are fsynced, and `os.replace`
puts them in place (then the directory is fsynced, so the rename survives a power cut). A
JSON file carries `"checksum": "sha256:..."` of its canonical payload (sorted keys, no
whitespace), so a copy that was truncated, zeroed, overwritten with garbage or edited by
hand reads as `DamagedFileError` naming the file; a JSON object without the key (written by
an older hpm-jax) is accepted when it parses, and a prefix of one never does. A full disk
during a write is `DiskFullError`: the temp file is removed and the old copy stays.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

CHECKSUM = "checksum"
_PREFIX = "sha256:"


class DamagedFileError(ValueError):
    """A file a run resumes from is damaged (truncated, zeroed, garbage, edited)."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = ""):
        self.path, self.reason, self.fix = os.fspath(path), reason, fix
        super().__init__(f"{self.path} is damaged ({reason}){'; ' + fix if fix else '.'}")


class DiskFullError(OSError):
    """No space left while writing a file; the previous copy is intact."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(
            errno.ENOSPC,
            f"no space left on the device while writing {os.fspath(path)}; the previous copy "
            "is intact. Free some space and run the same command again: it resumes there.",
        )


def _commit(tmp: str, path: str) -> None:
    """The moment a new copy becomes visible (the crash tests stop a run here)."""
    os.replace(tmp, path)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, *, previous: str | os.PathLike | None = None
) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without error
    (and never otherwise). With `previous`, the copy it replaces is moved there first (a
    kill between the two renames leaves `previous` and no `path`). ENOSPC/EDQUOT become
    `DiskFullError`."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and os.path.exists(path):
            _commit(path, os.fspath(previous))
        _commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path) from e
        raise
    _fsync_dir(directory)


def write_bytes(
    path: str | os.PathLike, data: bytes, *, previous: str | os.PathLike | None = None
) -> str:
    """Write `data` to `path` atomically (`previous`: as `atomic_file`); returns its sha256."""
    with atomic_file(path, previous=previous) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples as lists, NaN kept as JSON's NaN)."""
    return json.loads(json.dumps(value))


def write_json(
    path: str | os.PathLike,
    payload: dict[str, Any],
    *,
    indent: int | None = 1,
    previous: str | os.PathLike | None = None,
) -> None:
    """Write the dict `payload` with its checksum to `path`, atomically (`previous`: as
    `atomic_file`)."""
    payload = _plain(payload)
    if CHECKSUM in payload:
        raise ValueError(f"write_json: the key {CHECKSUM!r} is reserved for the checksum.")
    digest = hashlib.sha256(_canonical(payload)).hexdigest()
    text = json.dumps({**payload, CHECKSUM: _PREFIX + digest}, indent=indent)
    write_bytes(path, (text + "\n").encode(), previous=previous)


def read_json(path: str | os.PathLike, *, fix: str = "") -> dict[str, Any]:
    """The dict in the JSON file `path`, its checksum checked and removed. A file that does
    not parse as a JSON object, or whose checksum disagrees, is DamagedFileError (with
    `fix`, what to do, in its message). A missing file is FileNotFoundError."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        payload = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = "empty" if not raw else "all zero bytes" if not raw.strip(b"\0") else str(e)
        raise DamagedFileError(path, f"not JSON: {reason}", fix) from None
    if not isinstance(payload, dict):
        raise DamagedFileError(path, f"a JSON {type(payload).__name__}, not an object", fix)
    stored = payload.pop(CHECKSUM, None)
    if stored is not None:
        digest = hashlib.sha256(_canonical(payload)).hexdigest()
        if stored != _PREFIX + digest:
            raise DamagedFileError(path, "its checksum does not match its content", fix)
    return payload


def read_json_or_none(
    path: str | os.PathLike, log: Callable[[str], Any] | None, what: str
) -> dict[str, Any] | None:
    """`read_json(path)`, or None when the file is absent or damaged; a damaged one is
    named in one line to `log` as `what` (e.g. "a cache: recomputed")."""
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path)
    except DamagedFileError as e:
        if log is not None:
            log(f"{e.path} is damaged ({e.reason}); {what}.")
        return None


def npy_bytes(array: Any) -> bytes:
    """`array` as the bytes of a .npy file (no pickles)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
