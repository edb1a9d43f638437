"""absl `--help` that lists a program's flags, `--config` included, under console scripts too.

    def console_main() -> None:
        flag_help.show_in_help(__name__, _CONFIG)     # before app.run / cli.run
        app.run(main)

absl's `--help` prints the "key flags" of the main module, which it finds by the name
`sys.argv[0]`, and a flag is key to the module whose code defined it. So `--config`
(defined in `hpm_jax.config_lib`) never showed, and under a console script (`bin/hpm-train`,
a wrapper that defines no flags) nothing showed at all: only "Try --helpfull".
"""

from __future__ import annotations

import sys

from absl import flags


def show_in_help(module_name: str, *holders: flags.FlagHolder) -> None:
    """Make the flags defined by `module_name` (pass `__name__`) and `holders` (flags defined
    elsewhere, like `--config`) key flags of the main module, so that `--help` lists them."""
    values = flags.FLAGS
    main = sys.argv[0]
    # absl registers the flags of the module run as __main__ under sys.argv[0].
    defined = values.flags_by_module_dict().get(main if module_name == "__main__" else module_name)
    for flag in [*(defined or []), *(values[holder.name] for holder in holders)]:
        values.register_key_flag_for_module(main, flag)
