"""The scaling plot: every run, each model's envelope and its two fits, per metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no display, no global figure state

COLORS = {"hstu": "tab:red", "sasrec": "tab:blue"}


def plot_grid(
    runs: list[dict[str, Any]],
    fits: dict[str, Any],
    baseline: dict[str, float],
    protocol: str,
    metrics: Sequence[str],
    path: Path,
) -> None:
    """One panel per test metric (under ``protocol``): runs as dots, the envelope as a
    step line, the log-linear fit dashed and the saturating fit dotted, over the envelope's
    compute range; the most-popular model's test ``baseline`` as a grey line."""
    fig = Figure(figsize=(6 * len(metrics), 4.5))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for model in sorted({r["model"] for r in runs}):
            color = COLORS.get(model, "tab:gray")
            mine = [r for r in runs if r["model"] == model]
            ax.scatter(
                [r["flops"] for r in mine],
                [r["test"][protocol][metric] for r in mine],
                s=14,
                color=color,
                alpha=0.45,
                label=f"{model} runs",
            )
            fit = fits[model]["test"][protocol][metric]
            # the best so far holds on to the grid's largest compute
            ax.step(
                [*fit["envelope_flops"], fit["max_flops"]],
                [*fit["envelope_quality"], fit["envelope_quality"][-1]],
                where="post",
                color=color,
                label=f"{model} envelope",
            )
            lo, hi = fit["range"]
            c = np.geomspace(lo, hi, 100)
            line = fit["log_linear"]
            if line is not None:
                ax.plot(
                    c,
                    line["a"] + line["b"] * np.log(c),
                    "--",
                    color=color,
                    label=f"{model} {line['b']:.4f} ln C (R² {line['r2']:.2f})",
                )
            sat = fit["saturating"]
            if sat is not None and not sat["alpha_at_bound"]:
                ax.plot(
                    c,
                    sat["q_inf"] - sat["A"] * (c / sat["C0"]) ** -sat["alpha"],
                    ":",
                    color=color,
                    label=f"{model} q∞ {sat['q_inf']:.3f}, α {sat['alpha']:.2f} "
                    f"(R² {sat['r2']:.2f})",
                )
        ax.axhline(baseline[metric], color="gray", linestyle="-.", label="most popular")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"test {metric} ({protocol})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
