"""What every layer may use, importing nothing else of hpm_jax: files that survive a crash,
device meshes, compiler options, progress lines, optional packages, and the identity check
of a directory a run resumes in.

    from hpm_jax.runtime import integrity, sharding
    integrity.write_json(path, record)                 # atomic, with a checksum
    mesh = sharding.make_mesh()                        # one `data` axis over every device

Modules: `integrity` (atomic checksummed files), `identity` (one workdir-identity check and
its `WorkdirMismatchError`), `sharding` (mesh and shardings), `xla_options` (`jit` with the
CPU compiler options), `compilation_cache` (JAX's persistent cache, on in the programs),
`progress` (bars or plain lines), `extras` (an optional package, or an ImportError naming the
extra that installs it).
"""
