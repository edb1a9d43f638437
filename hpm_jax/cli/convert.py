"""Convert a PyTorch / RobustBench checkpoint into an hpm-jax Orbax checkpoint.

    python -m hpm_jax.convert --arch wide_resnet --checkpoint Carmon2019.pt --out /tmp/wrn \
        --arch_kwargs depth=28,width=10
    python -m hpm_jax.convert --robustbench Carmon2019Unlabeled --out /tmp/wrn \
        [--dataset cifar10 --threat_model Linf --model_dir ./models]

`--robustbench NAME` takes the architecture from `hpm_jax.interop.zoo`'s table and the file from
RobustBench's cache layout, MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt (downloaded if missing).

The result loads with `hpm_jax.models.export.load_model(OUT)`.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from typing import Any

from hpm_jax.interop.convert.core import RENAMES, torch_to_flax
from hpm_jax.interop.convert.torch_io import load_state_dict
from hpm_jax.models.export import save_model


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
    parser.add_argument("--arch", choices=sorted(RENAMES), help="required without --robustbench")
    parser.add_argument(
        "--checkpoint",
        help=".pt/.pth (weights only) or .safetensors; required without --robustbench",
    )
    parser.add_argument("--out", required=True, help="directory for the Orbax checkpoint")
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: read from the final linear layer"
    )
    parser.add_argument("--arch_kwargs", default="", help="e.g. depth=28,width=10")
    group = parser.add_argument_group("RobustBench models by name (instead of --arch)")
    group.add_argument("--robustbench", metavar="NAME", help="e.g. Carmon2019Unlabeled")
    group.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet")
    group.add_argument("--threat_model", default="Linf", help="Linf or L2")
    group.add_argument("--model_dir", default="./models", help="RobustBench's cache directory")
    args = parser.parse_args(argv)

    if args.robustbench:
        if args.arch or args.checkpoint or args.arch_kwargs or args.num_classes:
            parser.error("--robustbench takes the architecture from its table: drop --arch etc.")
        return _convert_robustbench(args)
    if not (args.arch and args.checkpoint):
        parser.error("--arch and --checkpoint are required (or use --robustbench NAME)")
    kwargs = parse_kwargs(args.arch_kwargs)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    variables = torch_to_flax(args.arch, load_state_dict(args.checkpoint), **kwargs)
    kwargs["num_classes"] = int(variables["params"]["head"]["fc"]["bias"].shape[0])
    out = save_model(args.out, variables, arch=args.arch, **kwargs)
    print(f"Wrote {args.arch} ({kwargs}) to {out}")
    return out


def _convert_robustbench(args: argparse.Namespace) -> str:
    from hpm_jax.interop.zoo.robustbench import model_kwargs, robustbench_variables

    info, variables = robustbench_variables(
        args.robustbench,
        dataset=args.dataset,
        threat_model=args.threat_model,
        model_dir=args.model_dir,
    )
    kwargs = model_kwargs(info)
    out = save_model(args.out, variables, arch=info.arch, **kwargs)
    print(
        f"Wrote RobustBench {info.name} ({info.dataset} {info.threat_model}: clean "
        f"{info.clean_acc}%, AutoAttack {info.autoattack_acc}%) as {info.arch} {kwargs} to {out}"
    )
    return out


def run() -> None:
    """Console-script entry point: errors as one clear line and exit code 2 (as argparse's own
    usage errors), not a traceback (`hpm_jax.cli`)."""
    from hpm_jax import cli

    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        cli.fail("hpm-convert", cli.one_line(e))


if __name__ == "__main__":
    run()
