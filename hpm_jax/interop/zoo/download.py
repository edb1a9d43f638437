"""Fetch a checkpoint file when the network is there; fail within seconds when it is not.

    path = fetch("15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ", "models/cifar10/Linf/Carmon2019Unlabeled.pt")
    reachable("drive.usercontent.google.com")    # False offline, after at most PROBE_TIMEOUT_S

`source` is a Google Drive file id (RobustBench's `gdrive_id`) or an https URL. The file is
written to `dest + ".part"` and renamed when complete, so a killed download never leaves a
truncated checkpoint at `dest`. A missing network raises `CheckpointUnavailableError` (a
`FileNotFoundError`) naming the exact path to place the file at by hand.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request

# Large Drive files need confirm=t to skip the "cannot scan for viruses" page.
GDRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
# Where a person downloads the file in a browser (shown in errors).
GDRIVE_PAGE = "https://drive.google.com/uc?id={id}"
PROBE_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0  # per socket read, not for the whole file
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class CheckpointUnavailableError(FileNotFoundError):
    """The checkpoint is not on disk and cannot be downloaded."""


def reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds.

    The connect runs in a daemon thread because the DNS lookup inside `create_connection`
    ignores socket timeouts and can block for far longer on a machine without network.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name=f"probe-{host}")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def source_url(source: str) -> str:
    """The download URL of a Drive id or an https URL."""
    return source if source.startswith(("http://", "https://")) else GDRIVE_URL.format(id=source)


def source_page(source: str) -> str:
    """Where a person can download `source` by hand."""
    return source if source.startswith(("http://", "https://")) else GDRIVE_PAGE.format(id=source)


def fetch(source: str, dest: str | os.PathLike, *, what: str = "the checkpoint") -> str:
    """`dest` if it exists, else downloads `source` there; returns the absolute path."""
    dest = os.path.abspath(os.fspath(dest))
    if os.path.isfile(dest):
        return dest
    url = source_url(source)
    host = urllib.parse.urlsplit(url).hostname or ""
    manual = (
        f"Download it from {source_page(source)} and place it at exactly {dest} "
        "(a RobustBench cache directory works as is: pass its model_dir)."
    )
    if not reachable(host):
        raise CheckpointUnavailableError(
            f"{what} is not at {dest} and cannot be downloaded: {host}:443 is unreachable "
            f"(no network?). {manual}"
        )
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    log.warning("Downloading %s from %s to %s", what, url, dest)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "hpm-jax"})
        with urllib.request.urlopen(request, timeout=READ_TIMEOUT_S) as response:
            if response.headers.get_content_type() == "text/html":
                # Drive answers quota or permission problems with a web page, not the file.
                raise CheckpointUnavailableError(
                    f"{url} returned a web page instead of {what}. {manual}"
                )
            with open(part, "wb") as f:
                shutil.copyfileobj(response, f, _CHUNK)
    except OSError as e:
        if os.path.exists(part):
            os.remove(part)
        if isinstance(e, CheckpointUnavailableError):
            raise
        raise CheckpointUnavailableError(
            f"Downloading {what} from {url} failed ({e}). {manual}"
        ) from e
    os.replace(part, dest)
    return dest
