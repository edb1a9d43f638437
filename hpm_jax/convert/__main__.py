"""Convert a PyTorch / RobustBench checkpoint into an hpm-jax Orbax checkpoint.

    python -m hpm_jax.convert --arch wide_resnet --checkpoint Carmon2019.pt --out /tmp/wrn \
        --arch_kwargs depth=28,width=10

The result loads with `hpm_jax.checkpointing.load_model(OUT)`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

from hpm_jax.checkpointing import save_model
from hpm_jax.convert.core import RENAMES, torch_to_flax
from hpm_jax.convert.torch_io import load_state_dict


def parse_kwargs(text: str) -> dict[str, Any]:
    """`depth=28,width=10,mean=(0.5,0.5,0.5)` -> {"depth": 28, "width": 10, "mean": [...]}."""
    if not text:
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        return {kw.arg: _plain(ast.literal_eval(kw.value)) for kw in call.keywords}
    except (SyntaxError, ValueError):
        raise ValueError(f"--arch_kwargs must look like depth=28,width=10; got {text!r}") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m hpm_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", required=True, choices=sorted(RENAMES))
    parser.add_argument(
        "--checkpoint", required=True, help=".pt/.pth (weights only) or .safetensors"
    )
    parser.add_argument("--out", required=True, help="directory for the Orbax checkpoint")
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: read from the final linear layer"
    )
    parser.add_argument("--arch_kwargs", default="", help="e.g. depth=28,width=10")
    args = parser.parse_args(argv)

    kwargs = parse_kwargs(args.arch_kwargs)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    variables = torch_to_flax(args.arch, load_state_dict(args.checkpoint), **kwargs)
    kwargs["num_classes"] = int(variables["params"]["head"]["fc"]["bias"].shape[0])
    out = save_model(args.out, variables, arch=args.arch, **kwargs)
    print(f"Wrote {args.arch} ({kwargs}) to {out}")
    return out


def run() -> None:
    """Console-script entry point: errors as one clear line, not a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    run()
