"""Figures of a sensitivity analysis: the heads of one model side by side (matplotlib Agg).

    result = sensitivity.analyze(model, variables, batches)
    paths = plots.write_figures(result, "/tmp/analysis")   # histograms.png, perturbations.png

histograms.png: per-sample distributions of the margin's Lipschitz constant ||grad_f m||
(raw, in each head's own logit units: the l2 scale s is in the legend), of the relative
sensitivity ||grad_f m|| ||f|| / |m| (scale-free) and of the first-order input-space distance
to the decision boundary |m| / ||grad_x m||. perturbations.png: against the radius (relative
to the mean feature norm), the typical relative margin change |dm| / m and the flip rate,
for random (dashed) and worst-case (solid) feature perturbations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpm_jax.runtime.extras import optional_import

# Figure objects without pyplot: they draw with Agg, change no global backend and open no
# window, so plotting is safe on servers and inside other programs.
Figure = optional_import("matplotlib.figure", extra="reports").Figure
_ticker = optional_import("matplotlib.ticker", extra="reports")
FuncFormatter, LogLocator, NullFormatter = (
    _ticker.FuncFormatter,
    _ticker.LogLocator,
    _ticker.NullFormatter,
)

# Fixed colours per head name, so that every figure (and every run) reads the same way.
COLORS = {"fc": "tab:red", "l2": "tab:blue", "hpm": "tab:green"}
_HISTOGRAMS = (
    ("lipschitz", "Lipschitz constant ||∇_f m||", "per-sample margin gradient norm (logit units)"),
    ("relative_sensitivity", "relative sensitivity ||∇_f m|| ||f|| / |m|", "scale-free"),
    ("input_distance", "input-space distance |m| / ||∇_x m||", "first order, pixel l2 units"),
)


def _log_axis(axis, low: float, high: float) -> None:
    """Log scale labelled in plain numbers at 1, 2, 5 x 10^k (at 10^k over wide ranges)."""
    subs = (1.0,) if high > 300 * low else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _color(name: str, index: int) -> str:
    return COLORS.get(name, f"C{index + 3}")


def _label(name: str, summary: Mapping[str, Any]) -> str:
    head = summary["heads"][name]
    scale = head.get("logit_scale")
    extra = f", s={scale:.3g}" if scale is not None else ""
    return f"{name} (acc {head['accuracy']:.3f}{extra})"


def plot_histograms(result: Mapping[str, Any], path: str) -> str:
    """Three panels of per-sample histograms (log-spaced bins), one outline per head."""
    summary, per_sample = result["summary"], result["per_sample"]
    fig = Figure(figsize=(5.2 * len(_HISTOGRAMS), 4.0))
    axes = fig.subplots(1, len(_HISTOGRAMS))
    for ax, (key, title, subtitle) in zip(axes, _HISTOGRAMS, strict=True):
        values = {n: np.asarray(q[key], np.float64) for n, q in per_sample.items()}
        values = {n: v[np.isfinite(v) & (v > 0)] for n, v in values.items()}
        pooled = np.concatenate([v for v in values.values() if v.size] or [np.ones(1)])
        low, high = np.quantile(pooled, [0.005, 0.995])
        bins = np.geomspace(low, max(high, low * 1.01), 40)
        for i, (name, v) in enumerate(values.items()):
            color = _color(name, i)
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.8,
                    color=color, label=_label(name, summary))  # fmt: skip
            if v.size:
                ax.axvline(np.median(v), color=color, ls=":", lw=1.2)
        ax.set_xscale("log")
        _log_axis(ax.xaxis, bins[0], bins[-1])
        ax.set_title(f"{title}\n({subtitle})", fontsize=10)
        ax.set_ylabel("samples")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle("Per-sample sensitivity (dotted: medians)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_perturbations(result: Mapping[str, Any], path: str) -> str:
    """Relative margin change and flip rate against the relative radius, random vs worst case."""
    summary = result["summary"]
    radii = np.asarray(summary["relative_radii"])
    fig = Figure(figsize=(11.0, 4.2))
    ax_m, ax_f = fig.subplots(1, 2)
    for i, name in enumerate(summary["heads"]):
        head, color = summary["heads"][name], _color(name, i)
        for kind, style in (("worst_case", "-"), ("random", "--")):
            label = f"{_label(name, summary)}, {kind.replace('_', ' ')}"
            change = np.asarray(head[kind]["relative_margin_change_median"], np.float64)
            ax_m.plot(radii, change, style, color=color, marker="o", ms=3, label=label)
            ax_f.plot(radii, head[kind]["flip_rate"], style, color=color, marker="o", ms=3,
                      label=label)  # fmt: skip
    ax_m.axhline(1.0, color="k", lw=0.8, ls=":")
    ax_m.text(radii[0], 1.05, "flip (|dm| = m)", fontsize=8)
    ax_m.set_yscale("log")
    _log_axis(ax_m.yaxis, *ax_m.get_ylim())
    ax_m.set_title("median |m(f+δ) - m(f)| / m(f), correctly classified samples", fontsize=10)
    ax_f.set_title("flip rate (correct -> wrong)", fontsize=10)
    ax_f.set_ylim(-0.02, 1.02)
    norm = summary["mean_feature_norm"]
    for ax in (ax_m, ax_f):
        ax.set_xscale("log")
        ax.set_xticks(radii, [f"{r:g}" for r in radii])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"radius ||δ|| / mean ||f||   (mean ||f|| = {norm:.3g})")
        ax.grid(alpha=0.3, which="both")
    ax_f.legend(fontsize=7)
    context = summary.get("context", "joint")
    fig.suptitle(
        f"Feature perturbations: solid worst case (PGD), dashed random on the sphere "
        f"({context} context for batch-coupled heads)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_figures(result: Mapping[str, Any], directory: str) -> list[str]:
    """histograms.png and perturbations.png of `analyze`'s result in `directory`."""
    os.makedirs(directory, exist_ok=True)
    return [
        plot_histograms(result, os.path.join(directory, "histograms.png")),
        plot_perturbations(result, os.path.join(directory, "perturbations.png")),
    ]
