"""The human side of an evaluation report: a console table, summary.md and PNG plots.

    from hpm_jax.evaluation import reports
    report = json.load(open("/tmp/ev/report.json"))        # hpm_jax.evaluation.evaluate's report
    print(reports.table(report))                           # rows FC, l2-EMA, HPM
    reports.write_all(report, "/tmp/ev")   # summary.md, robustness.png (+ eps_curves.png)

Numbers are robust accuracy over the report's n points: AutoAttack's per-sample worst case
for FC and l2-EMA, MSA's for HPM (the final adversarial batches re-judged by HPM).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ROW_NAMES = {"fc": "FC", "ema_l2": "l2-EMA", "hpm": "HPM", "baseline": "FC baseline"}


def _processes(report: dict[str, Any]) -> str:
    """How several processes shared the batches out ("" for one process)."""
    if report.get("processes", 1) == 1:
        return ""
    return f" ({report['processes']} processes, batch_sharding {report.get('batch_sharding')})"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def row_figures(row: Mapping[str, Any]) -> dict[str, float | None]:
    """clean, AutoAttack (naive for HPM) and MSA robust accuracy of one row (None: not run)."""
    aa = row.get("autoattack") or row.get("naive_autoattack")
    msa = row.get("msa")
    return {
        "clean": row["clean_accuracy"],
        "autoattack": None if aa is None else aa["robust_accuracy"],
        "msa": None if msa is None else msa["robust_accuracy"],
    }


def _aa_label(row: Mapping[str, Any]) -> str:
    return "AutoAttack (naive, STE)" if "naive_autoattack" in row else "AutoAttack"


def eps_text(eps: float) -> str:
    """eps as a number, and as k/255 when it is one (8/255 reads better than 0.0313725)."""
    k = round(eps * 255)
    return f"{eps:g} ({k}/255)" if k and abs(eps * 255 - k) < 1e-6 else f"{eps:g}"


def settings_line(report: Mapping[str, Any]) -> str:
    """n, eps, batches, version and the reduced budgets, in one line."""
    s = report["settings"]
    opts = s.get("attack_options") or {}
    budget = "; ".join(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in o.items()) for name, o in opts.items()
    )
    return (
        f"n={report['num_examples']} ({report['dataset']} {report['split']}, first n in order, "
        f"batches of {report['batch_size']}), {s['norm']} eps={eps_text(s['eps'])}, AutoAttack "
        f"'{s['version']}'" + (f" with {budget}" if budget else " (full budget)")
    )


def table(report: Mapping[str, Any]) -> str:
    """The console table: rows per head; clean, AutoAttack and MSA robust accuracy."""
    lines = [
        f"{'':12} {'clean':>8} {'AutoAttack':>11} {'MSA':>8}",
    ]
    for name, row in report["heads"].items():
        f = row_figures(row)
        aa = _pct(f["autoattack"]) + ("*" if "naive_autoattack" in row else "")
        lines.append(
            f"{ROW_NAMES.get(name, name):12} {_pct(f['clean']):>8} {aa:>11} {_pct(f['msa']):>8}"
        )
    if any("naive_autoattack" in r for r in report["heads"].values()):
        lines.append(
            "* HPM under plain AutoAttack through its own STE gradient (a naive evaluation "
            "of a dynamic defense); MSA is the number to report."
        )
    lines.append(settings_line(report))
    return "\n".join(lines)


def markdown(report: Mapping[str, Any], files: Mapping[str, str] | None = None) -> str:
    """summary.md: the table, per-surrogate and per-attack figures, flags, settings, times."""
    out = [
        f"# Robustness of `{report['checkpoint']}`",
        "",
        settings_line(report) + ".",
        "",
        "| head | clean | AutoAttack | MSA |",
        "|---|---|---|---|",
    ]
    for name, row in report["heads"].items():
        f = row_figures(row)
        aa = _pct(f["autoattack"])
        if "naive_autoattack" in row:
            aa += " (naive, through the STE)"
        out.append(
            f"| {ROW_NAMES.get(name, name)} | {_pct(f['clean'])} | {aa} | {_pct(f['msa'])} |"
        )
    out.append("")
    for name, row in report["heads"].items():
        label = ROW_NAMES.get(name, name)
        for kind in ("autoattack", "naive_autoattack", "msa"):
            entry = row.get(kind)
            if entry is None:
                continue
            title = {"autoattack": "AutoAttack", "naive_autoattack": "naive AutoAttack",
                     "msa": "MSA"}[kind]  # fmt: skip
            out += [f"## {label}: {title}", ""]
            if kind == "msa":
                out.append(
                    "Per surrogate (cumulative, in order): "
                    + ", ".join(f"{k} {_pct(v)}" for k, v in entry["per_surrogate"].items())
                    + f"; final re-evaluation of x_adv on HPM: "
                    f"{_pct(entry['final_reevaluation_accuracy'])}."
                )
                out.append("")
            out += ["| after attack | robust accuracy | seconds |", "|---|---|---|"]
            for attack, acc in entry["robust_accuracy_after"].items():
                out.append(f"| {attack} | {_pct(acc)} | {entry['times'].get(attack, 0):.1f} |")
            out.append(f"| **final** | **{_pct(entry['robust_accuracy'])}** | |")
            out.append("")
            flagged = entry.get("flagged") or []
            out.append(
                "Sanity checks flagged: " + (", ".join(flagged) if flagged else "none") + "."
            )
            checks = entry["chain"]["checks"] if kind == "msa" else entry["checks"]
            for c in checks:
                if c["flagged"]:
                    out.append(f"- **{c['name']}**: {c['message']}")
            out.append("")
    if report.get("curves"):
        out += ["## Robust accuracy vs eps", "", "| head | " + " | ".join(
            next(iter(report["curves"].values()))) + " |"]  # fmt: skip
        out.append("|---" * (1 + len(next(iter(report["curves"].values())))) + "|")
        for name, curve in report["curves"].items():
            out.append(
                f"| {ROW_NAMES.get(name, name)} | " + " | ".join(_pct(v) for v in curve.values())
                + " |"
            )  # fmt: skip
        out.append("")
    out += ["## Settings", "", "```"]
    out += [f"{k}: {v}" for k, v in report["settings"].items()]
    first = next(iter(report["heads"].values()))
    entry = first.get("autoattack") or first.get("msa") or first.get("naive_autoattack")
    if entry:
        for attack, opts in entry["attack_settings"].items():
            out.append(f"{attack}: {opts}")
    out += [
        f"devices: {report['devices']}{_processes(report)}",
        f"order: {report['order']}",
        "```",
        "",
        "## Timings (seconds, this run)",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in report["seconds"].items()]
    out.append(f"- total: {report['total_seconds']}")
    if files:
        out += ["", "## Plots", ""] + [f"![{k}]({os.path.basename(v)})" for k, v in files.items()]
    return "\n".join(out) + "\n"


def plot_bars(report: Mapping[str, Any], path: str) -> str:
    """Grouped bars per head: clean, AutoAttack, MSA robust accuracy."""
    from hpm_jax.runtime.extras import optional_import

    optional_import("matplotlib", extra="reports").use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["heads"])
    naive = any("naive_autoattack" in r for r in report["heads"].values())
    aa_label = "AutoAttack (HPM: naive, via STE)" if naive else "AutoAttack"
    kinds = [("clean", "clean"), ("autoattack", aa_label), ("msa", "MSA")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(names), 3.6))
    width = 0.26
    for k, (key, label) in enumerate(kinds):
        values = [row_figures(report["heads"][n])[key] for n in names]
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, [0 if v is None else 100 * v for v in values], width, label=label)
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if v is None else f"{100 * v:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(names)), [ROW_NAMES.get(n, n) for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(
        f"n={report['num_examples']}, {report['settings']['norm']} "
        f"eps={report['settings']['eps']:g}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(report: Mapping[str, Any], path: str) -> str:
    """Robust accuracy against eps, one line per head."""
    from hpm_jax.runtime.extras import optional_import

    optional_import("matplotlib", extra="reports").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for name, curve in report["curves"].items():
        eps = [float(e) for e in curve]
        label = ROW_NAMES.get(name, name) + (" (MSA)" if report["heads"][name].get("msa") else "")
        ax.plot(eps, [100 * v for v in curve.values()], marker="o", label=label)
    ax.set_xlabel(f"{report['settings']['norm']} eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(", ".join(report["settings"]["curve_attacks"]), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(report: Mapping[str, Any], directory: str) -> dict[str, str]:
    """robustness.png, eps_curves.png (when the report has curves) and summary.md."""
    files = {"robustness": plot_bars(report, os.path.join(directory, "robustness.png"))}
    if report.get("curves"):
        files["eps_curves"] = plot_curves(report, os.path.join(directory, "eps_curves.png"))
    summary = os.path.join(directory, "summary.md")
    with open(summary, "w") as f:
        f.write(markdown(report, files))
    files["summary"] = summary
    return files
