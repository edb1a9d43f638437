"""JAX's persistent compilation cache, on by default in the programs: a resumed or repeated
run loads its compiled programs from disk instead of compiling them again.

    from hpm_jax.runtime import compilation_cache
    compilation_cache.enable()              # the default directory (below); returns it
    compilation_cache.enable("/tmp/cache")  # a directory of your own; "" turns the cache off

The programs (`hpm_jax.cli.run`: hpm-train, hpm-evaluate, the demo, the study) call `enable`
with `--compilation_cache_dir` before anything compiles. The directory is, first found:
the argument; JAX_COMPILATION_CACHE_DIR (JAX's own setting); `default_directory()`, a
per-user cache directory ($XDG_CACHE_HOME or ~/.cache, then hpm_jax/jax_compilation_cache).
A per-user directory, not the workdir: programs depend on shapes and architecture, never on
weights (weights are arguments), so the next workdir, the demo's next stage or the study's
next point load the same programs; `--overwrite` never throws them away; and entries are
keyed by the program, the compiler options, JAX's version and the device, so runs of other
configurations or machines never load a wrong one. The cache is never pruned (JAX's
`jax_compilation_cache_max_size`, default unlimited, sets a bound).

JAX caches only programs that took at least 1 s to compile by default; `enable` caches
every program (`jax_persistent_cache_min_compile_time_secs=0`, no minimum size): with the
threshold, a tiny evaluation kept 4 of its 27 programs (benchmarks/RESULTS.md), and the
many quick programs add up. On a GPU, JAX's default also keeps XLA's autotuning results
there (`jax_persistent_cache_enable_xla_caches`).
JAX_ENABLE_COMPILATION_CACHE=false (JAX's switch; the test suite sets it) leaves the cache
off whatever the arguments.
"""

from __future__ import annotations

import os

import jax

SUBDIRECTORY = os.path.join("hpm_jax", "jax_compilation_cache")


def default_directory() -> str:
    """$XDG_CACHE_HOME/hpm_jax/jax_compilation_cache (XDG_CACHE_HOME defaulting to ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, SUBDIRECTORY)


def enable(directory: str | None = None) -> str | None:
    """Turn JAX's persistent compilation cache on in `directory` (None: JAX's setting
    JAX_COMPILATION_CACHE_DIR, else `default_directory()`; "": off) for every program
    compiled from now on. Returns the directory, or None when the cache stays off. Call it
    before the first compilation: JAX reads the directory once."""
    if directory == "" or not jax.config.jax_enable_compilation_cache:
        return None
    directory = directory or jax.config.jax_compilation_cache_dir or default_directory()
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
