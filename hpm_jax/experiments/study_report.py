"""The numbers and pictures of an HPM design-space study (`hpm_jax.experiments.study`): Student-t
intervals over seeds, the markdown table and the clean-vs-robust plot.

    from hpm_jax.experiments import study_report
    study_report.interval([0.452, 0.467])        # {"mean": ..., "half_width": ..., ...}
    table = json.load(open("/tmp/study/study.json"))
    print(study_report.markdown(table))
    study_report.write(table, "/tmp/study")       # study.json, study.md, study.png
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpm_jax.runtime import integrity

STUDY_JSON, STUDY_MD, STUDY_PNG = "study.json", "study.md", "study.png"
REFERENCE = "default"  # the point the others are compared with, when the study has one

# ---- statistics ----------------------------------------------------------------------------

# Student-t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (a table to 30, then
    the Cornish-Fisher expansion around the normal's 1.95996; error < 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the half-width of a 95% Student-t interval for it (None with one value)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    half = None
    if len(v) > 1:
        half = float(t_quantile_975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": mean, "half_width": half, "n": len(v), "values": [float(x) for x in v]}


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    if entry["half_width"] is None:
        return f"{100 * entry['mean']:.1f}"
    return f"{100 * entry['mean']:.1f} ± {100 * entry['half_width']:.1f}"


def markdown(table: dict[str, Any]) -> str:
    """study.md: one row per point (percent, mean ± 95% interval over seeds)."""
    rows = table["rows"]
    surrogates = list(rows[0]["msa_per_surrogate"])
    has_ref = any("msa_minus_default" in r for r in rows)
    head = ["point", "overrides", "HPM clean", "MSA on HPM"]
    head += (["MSA − default"] if has_ref else []) + [f"after {s}" for s in surrogates]
    head += ["FC head clean", "FC head AA"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    b = table.get("baseline")
    if b:
        out.append(
            f"| FC baseline | init.checkpoint | {100 * b['clean']:.1f} (FC) | "
            f"{100 * b['autoattack']:.1f} (AutoAttack) |" + " |" * (len(head) - 4)
        )
    for r in rows:
        overrides = ", ".join(f"`{o}`" for o in r["overrides"]) or "(as configured)"
        cells = [r["name"], overrides, _cell(r["clean"]), _cell(r["msa"])]
        if has_ref:
            cells.append(_cell(r.get("msa_minus_default")) if r["name"] != REFERENCE else "0")
        cells += [_cell(r["msa_per_surrogate"][s]) for s in surrogates]
        cells += [_cell(r["fc_clean"]), _cell(r["fc_autoattack"])]
        out.append("| " + " | ".join(cells) + " |")
    n = len(table["seeds"])
    out += [
        "",
        f"Accuracy in percent: mean ± half-width of a 95% Student-t interval over {n} "
        f"training seed(s) {table['seeds']} (t with {n - 1} df), evaluation seed and batches "
        "fixed. MSA after each surrogate is cumulative, in order. `MSA − default` pairs each "
        "seed with the default point's. FC baseline: AutoAttack on the model every point "
        "starts from (one model, no interval). " + table["settings"] + ".",
    ]
    return "\n".join(out) + "\n"


def plot(table: dict[str, Any], path: str) -> str:
    """study.png: clean vs MSA robust accuracy per point (95% intervals as error bars), the
    FC baseline's clean vs AutoAttack accuracy as a star and a dotted line."""
    from hpm_jax.runtime.extras import optional_import

    Figure = optional_import("matplotlib.figure", extra="reports").Figure
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    for i, r in enumerate(table["rows"]):
        c, m = r["clean"], r["msa"]
        color = f"C{i % 10}"
        ax.errorbar(
            100 * c["mean"],
            100 * m["mean"],
            xerr=None if c["half_width"] is None else 100 * c["half_width"],
            yerr=None if m["half_width"] is None else 100 * m["half_width"],
            fmt="o",
            color=color,
            capsize=3,
            label=r["name"],
        )
        ax.scatter(
            [100 * v for v in c["values"]],
            [100 * v for v in m["values"]],
            s=10,
            color=color,
            alpha=0.4,
        )
    b = table.get("baseline")
    if b:
        ax.plot(
            100 * b["clean"],
            100 * b["autoattack"],
            marker="*",
            ms=14,
            color="k",
            ls="none",
            label="FC baseline (AutoAttack)",
        )
        ax.axhline(100 * b["autoattack"], color="k", ls=":", lw=1)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%): MSA on HPM, AutoAttack on FC")
    ax.set_title(
        f"mean and 95% interval over seeds {table['seeds']}; faint: single seeds", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write(table: dict[str, Any], workdir: str) -> dict[str, str]:
    """study.json, study.md and study.png in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    paths = {
        k: os.path.join(workdir, f)
        for k, f in (("json", STUDY_JSON), ("md", STUDY_MD), ("png", STUDY_PNG))
    }
    integrity.write_json(paths["json"], table)
    integrity.write_bytes(paths["md"], markdown(table).encode())
    plot(table, paths["png"])
    return paths
