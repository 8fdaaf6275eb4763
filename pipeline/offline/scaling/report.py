"""A grid's results: ``results.json`` (every run, every envelope and fit) and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.offline.scaling import FIT_METRICS
from pipeline.offline.scaling.fit import envelope_fits
from pipeline.offline.scaling.grid import GridSettings
from pipeline.offline.training import PROTOCOLS

RESULTS_FILE = "results.json"
PLOT_FILE = "scaling.png"


def model_fits(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, split (valid, test), protocol and metric: the envelope (as run names) and
    its fits."""
    fits: dict[str, Any] = {}
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        flops = [float(r["flops"]) for r in mine]
        for split in ("valid", "test"):
            for protocol in PROTOCOLS:
                for metric in FIT_METRICS:
                    quality = [float(r[split][protocol][metric]) for r in mine]
                    fit = envelope_fits(flops, quality)
                    fit["envelope"] = [mine[i]["run"] for i in fit["envelope"]]
                    fits.setdefault(model, {}).setdefault(split, {}).setdefault(protocol, {})[
                        metric
                    ] = fit
    return fits


def summary_lines(fits: dict[str, Any], protocol: str, metric: str) -> list[str]:
    """One line per model: the envelope of test ``metric`` under ``protocol`` and its fits."""
    lines = []
    for model, by_split in fits.items():
        fit = by_split["test"][protocol][metric]
        lo, hi = fit["range"]
        text = f"{model} test {metric} ({protocol}): envelope {len(fit['envelope'])} runs, "
        text += f"{lo:.3g}..{hi:.3g} FLOPs ({hi / lo:.0f}x), best {fit['envelope_quality'][-1]:.4f}"
        line, sat = fit["log_linear"], fit["saturating"]
        if line is not None:
            text += f"; {line['a']:.4f} + {line['b']:.5f} ln C (R² {line['r2']:.2f})"
        if sat is not None and sat["alpha_at_bound"]:
            text += "; saturating fit: alpha at its bound (no saturation in the range)"
        elif sat is not None:
            text += f"; q_inf {sat['q_inf']:.4f}, alpha {sat['alpha']:.3f} (R² {sat['r2']:.2f})"
        lines.append(text)
    return lines


def write_report(
    runs: list[dict[str, Any]],
    settings: GridSettings,
    data: dict[str, int],
    baseline: dict[str, Any],
    out_dir: Path,
    plot_metric: str,
) -> list[Path]:
    """Write ``results.json`` and ``scaling.png`` into ``out_dir``; their paths.
    ``baseline``: the most-popular model's validation and test metrics (both protocols)."""
    from pipeline.offline.scaling.plot import plot_grid  # matplotlib: only when plotting

    fits = model_fits(runs)
    protocol = "exclude-seen" if settings.exclude_seen else "all-items"
    results = {
        "settings": settings.model_dump(),
        "data": data,
        "protocol_selected_on": protocol,
        "baseline": baseline,
        "runs": runs,
        "fits": fits,
    }
    json_path = out_dir / RESULTS_FILE
    json_path.write_text(json.dumps(results, indent=1))
    plot_path = out_dir / PLOT_FILE
    plot_grid(runs, fits, baseline["test"][protocol], protocol, (plot_metric, "hr@100"), plot_path)
    return [json_path, plot_path]
