"""The programs' command lines: one thin module per program, and what they share.

    hpm_jax/cli/train.py     hpm-train     (python -m hpm_jax.train)     -> training.train.run
    hpm_jax/cli/evaluate.py  hpm-evaluate  (python -m hpm_jax.evaluate)  -> evaluation.evaluate.run
    hpm_jax/cli/demo.py      hpm-demo      (python -m hpm_jax.demo)      -> experiments.demo.run
    hpm_jax/cli/study.py     hpm-study     (python -m hpm_jax.study)     -> experiments.study.run
    hpm_jax/cli/analysis.py  hpm-analysis  (python -m hpm_jax.analysis)  -> checkpoint_analysis.run
    hpm_jax/cli/convert.py   hpm-convert   (python -m hpm_jax.convert)   -> interop.convert

(each `hpm_jax.X` run with `python -m` is a shim of a few lines that calls its program here).

Only these modules define flags (absl; argparse for hpm-convert): the library takes
ConfigDicts and paths. A program:

    from hpm_jax import cli, config_lib
    _CONFIG = cli.define_config_flag()

    def main(argv: list[str], overrides: list[str]) -> None:
        config = config_lib.load_config(_CONFIG.value, overrides)
        ...

    cli.run("hpm-train", main, user_errors=(ConfigError,))

`run` takes the `--config.KEY=VALUE` arguments out of argv (`config_lib.split_overrides`:
keys split at dots only, so `--config.evaluation.attack_options.apgd-ce.n_iter=10` works, as
does `apgd_ce`), turns JAX's persistent compilation cache on (`--compilation_cache_dir`,
every program's flag: `hpm_jax.runtime.compilation_cache`) and runs `main` under absl.
Every user error (a bad or missing flag, a config file, variant or key that does not exist, a
value of the wrong type, and the `user_errors` the program names: a missing dataset, a
checkpoint of another architecture, settings changed under an existing state file...) ends
the program with one line on stderr, `PROG: error: MESSAGE`, naming the fix, and exit code 2
(`EXIT_USER_ERROR`), without a traceback. The programs check what they are asked for before
they write anything, so such an error never loses output.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from absl import app, flags

from hpm_jax import config_lib
from hpm_jax.runtime import compilation_cache, integrity

EXIT_USER_ERROR = 2
# Errors of what the user asked for, in every program (each program adds its own), and the
# two a program cannot repair itself: a damaged file it resumes from, a full disk (both
# leave the good state there; the message says what to do).
COMMON_USER_ERRORS: tuple[type[BaseException], ...] = (
    integrity.DamagedFileError,
    integrity.DiskFullError,
    config_lib.ConfigError,
    FileNotFoundError,
    FileExistsError,
    app.UsageError,
)
_MAX_LISTED = 3
# Every program's: compiled programs are kept on disk (`hpm_jax.runtime.compilation_cache`).
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "JAX's persistent compilation cache: a resumed or repeated "
    "run loads its compiled programs from here. Default: JAX_COMPILATION_CACHE_DIR, else "
    f"~/.cache/{compilation_cache.SUBDIRECTORY} ($XDG_CACHE_HOME); '' turns it off.",
)  # fmt: skip


class UserError(ValueError):
    """A mistake in what the user asked for; the message names the fix."""


def one_line(error: BaseException) -> str:
    """The error's message on one line. A checkpoint mismatch (lists of keys) is summarised:
    how many keys are missing, unexpected and mis-shaped, the first few of each, the hint."""
    missing = getattr(error, "missing", None)
    if isinstance(missing, list) and hasattr(error, "misshaped"):
        head = str(error).splitlines()[0]
        parts = []
        for title, items in (
            ("missing from the checkpoint", missing),
            ("unexpected", list(getattr(error, "unexpected", []))),
            ("mis-shaped", [f"{k} {a} vs {b}" for k, (a, b) in error.misshaped.items()]),
        ):
            if items:
                more = ", ..." if len(items) > _MAX_LISTED else ""
                shown = ", ".join(items[:_MAX_LISTED]) + more
                parts.append(f"{len(items)} {title} ({shown})")
        hint = getattr(error, "hint", "")
        return " ".join(f"{head} {'; '.join(parts)}. {hint}".split())
    return " ".join(str(error).split()) or type(error).__name__


def fail(prog: str, message: str) -> NoReturn:
    """Print `PROG: error: MESSAGE` (one line) to stderr and exit with code 2."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def program_imports(prog: str, extra: str = "train") -> Iterator[None]:
    """Around a program module's imports of the library (its last statement): on the core
    install, whose missing optional packages `hpm_jax.runtime.extras` names, the program (even its
    --help) ends with one line naming the extra it needs, not a 25-line traceback."""
    try:
        yield
    except ImportError as error:
        if "hpm-jax[" not in str(error):  # not a missing extra: a bug, keep its traceback
            raise
        fail(prog, f"{prog} needs hpm-jax's '{extra}' extra: pip install -e '.[{extra}]' (or "
                   f"pip install 'hpm-jax[{extra}]'). {one_line(error)}")  # fmt: skip


def run(
    prog: str,
    main: Callable[[list[str], list[str]], None],
    *,
    user_errors: Sequence[type[BaseException]] = (),
    argv: Sequence[str] | None = None,
    config: bool = True,
) -> None:
    """absl's `app.run(main)`, with `main(argv, config_overrides)` and user errors as one line
    (see the module docstring). Errors not named stay tracebacks: they are bugs. A program
    without a --config flag passes config=False (its overrides are then unknown flags)."""
    argv = list(sys.argv if argv is None else argv)
    rest, overrides = config_lib.split_overrides(argv) if config else (argv, [])
    errors = (*COMMON_USER_ERRORS, *user_errors)

    def parse(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as error:
            fail(prog, f"{one_line(error)} (--helpshort lists the flags)")

    def body(args: list[str]) -> None:
        if len(args) > 1:
            fail(prog, f"unexpected arguments {args[1:]}; flags look like --name=value.")
        try:
            compilation_cache.enable(_COMPILATION_CACHE_DIR.value)  # before anything compiles
            main(args, overrides)
        except errors as error:
            fail(prog, one_line(error))

    app.run(body, argv=rest, flags_parser=parse)


def default_verbosity(level: int = -1) -> None:
    """absl verbosity `level` (default WARNING: Orbax and TFDS log every read at INFO) unless
    the user chose one with --verbosity / -v, which is then honoured."""
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(level)


def require(prog: str, **values: object) -> None:
    """Fail (one line) when any of these flags was not given: `require("hpm-train", workdir=w)`."""
    missing = [f"--{name}" for name, value in values.items() if value in (None, "")]
    if missing:
        fail(prog, f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                   f"(e.g. --{missing[0][2:]}=...); --helpshort lists the flags.")  # fmt: skip


def define_config_flag(name: str = "config", help_string: str = "") -> flags.FlagHolder:
    """The `--config=path.py[:arg]` flag (a string: `config_lib.load_config` reads it). Its
    `--config.a.b=v` overrides are taken out of argv by `config_lib.split_overrides` (`run`).
    Not `ml_collections.config_flags`: config_lib's docstring says why."""
    help_string = help_string or (
        "Config file, path.py or path.py:variant; override keys as --config.train.num_steps=100."
    )
    return flags.DEFINE_string(name, None, help_string)


def show_in_help(module_name: str, *holders: flags.FlagHolder) -> None:
    """Make the flags defined by `module_name` (pass `__name__`), `holders` (flags defined
    elsewhere, like `--config`) and `--compilation_cache_dir` key flags of the main module, so
    that `--help` lists them.

    absl's `--help` prints the "key flags" of the main module, which it finds by the name
    `sys.argv[0]`, and a flag is key to the module whose code defined it. So `--config`
    (defined here) never showed, and under a console script (`bin/hpm-train`, a wrapper that
    defines no flags) nothing showed at all: only "Try --helpfull". Call it before `run`."""
    values = flags.FLAGS
    main = sys.argv[0]
    # absl registers the flags of the module run as __main__ under sys.argv[0].
    defined = values.flags_by_module_dict().get(main if module_name == "__main__" else module_name)
    shared = (*holders, _COMPILATION_CACHE_DIR)  # every program's flags defined here
    for flag in [*(defined or []), *(values[holder.name] for holder in shared)]:
        values.register_key_flag_for_module(main, flag)


def quiet_attack_logger() -> None:
    """Programs print the attacks' lines themselves (log=..., and log.txt): the logger's records
    stop there instead of reaching absl's handler too, which printed each line (and each
    warning) a second time at the verbosity that shows them. Its level is left alone. A
    logger with no handler on its way up hands WARNING records to Python's last-resort
    handler, which printed every sanity-check warning (dynamic defense, batch dependence) a
    second time on stderr: a NullHandler takes them instead."""
    import logging as std_logging

    logger = std_logging.getLogger("hpm_jax.autoattack")
    logger.propagate = False
    if not any(isinstance(h, std_logging.NullHandler) for h in logger.handlers):
        logger.addHandler(std_logging.NullHandler())
