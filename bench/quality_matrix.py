"""Offline quality over several data sets: genrec's models against Meta's research code.

Runs ``bench/offline_quality.py`` (same flags, same defaults: the paper's split, both
protocols, every seed) on each data set, then puts every data set x model x protocol in one
table beside the reference's figure and the ratio. The reference figures come from
``../shared/tools/peer-gr.sh`` runs on the same files: pass each run's final JSON line (or its
``out.json``) as ``--peer SET:MODEL=FILE[,FILE...]``; its last epoch is the figure
(exclude-seen: the peer's own protocol, ``ndcg@10``; all-items: ``ndcg@10_nf``), averaged over
the files given (Meta's code is unseeded: repeated runs are its seeds).

    python3 bench/quality_matrix.py \\
        --set ml-latest-small=../shared/data/ml-latest-small/ratings.csv \\
        --set beauty=../shared/data/amazon/Beauty.csv \\
        --set sports=../shared/data/amazon/Sports_and_Outdoors.csv \\
        --peer beauty:hstu=peer-beauty-hstu.json --models hstu,sasrec --seeds 0,1,2

Prints the table to stderr and one JSON object to stdout: every data set's offline_quality
result, the table's rows and, for each data set with both HSTU and SASRec runs, how far HSTU is
above SASRec per protocol (``gaps``: the difference of the means, each model's seed standard
deviation, the per-seed differences over the seeds both have, and whether the difference exceeds
the larger of the two standard deviations, issue 25's "by more than the seed spread"). Any
other flag is offline_quality's (``--epochs``, ``--threads``, ``--max-len``...) and applies to
every data set.

A set's runs can also come from earlier ``bench/offline_quality.py`` outputs (runs done apart,
a few seeds at a time): ``--runs NAME=FILE[,FILE...]`` pools their runs instead of training.
The files must agree on the data and on every training setting; a model and seed given twice
is refused.

    python3 bench/quality_matrix.py --runs beauty=b-s0.json,b-s1.json,b-s2.json \\
        --peer beauty:hstu=peer-beauty-hstu.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# run as a script, bench/ is on the path and the repository root is not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import offline_quality

# The peer's summary keys for each protocol's NDCG@10 (peer-gr.sh's header).
PEER_KEYS = {"all-items": "ndcg@10_nf", "exclude-seen": "ndcg@10"}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="NAME=PATH",
        help="a data set: its name in the table and its event log (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--runs", action="append", default=[], metavar="NAME=FILE[,FILE...]",
        help="a data set whose runs are pooled from offline_quality.py outputs (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--peer", action="append", default=[], metavar="SET:MODEL=FILE[,FILE...]",
        help="the reference's figure for SET and MODEL: peer-gr.sh results, their mean (repeatable)",
    )  # fmt: skip
    return p.parse_known_args(argv)


def named(items: list[str], flag: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; a malformed item is a usage error."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise SystemExit(f"{flag} {name!r} is given twice")
        out[name] = value
    return out


# Settings that say how a run ran or which runs a file holds, not what was trained.
RUN_SETTINGS = {"models", "seeds", "threads", "torch_threads", "progress", "device"}
# Settings whose flags were removed after being measured (docs/quality.md): each at the value
# that is today's behaviour, which a file written after the removal therefore has; a file with
# another value ran something that no longer exists. The others only took effect beside one of
# these (the EMA's decay, the shared negatives' source).
REMOVED_SETTINGS = {
    "weight_average": "none",
    "lr_schedule": "constant",
    "lr_warmup_steps": 0,
    "shared_negatives": 0,
}
REMOVED_DEPENDENT = {"ema_decay", "shared_negatives_from"}
# Settings added with a new behaviour as their default: a file written before one existed ran
# the earlier behaviour, this value (tail averaging: docs/quality.md, "Tail averaging").
ADDED_SETTINGS = {"tail_average": 0.0}


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_problem(run: Any) -> str | None:
    """What keeps one entry of an offline_quality output's ``runs`` from being pooled (a
    model name, an integer seed, finite times, and every protocol's metrics and interval
    half-widths), or None."""
    if not isinstance(run, dict):
        return "a run that is not an object"
    if not isinstance(run.get("model"), str) or type(run.get("seed")) is not int:
        model, seed = run.get("model"), run.get("seed")
        return f"a run without a model name and an integer seed ({model!r}, {seed!r})"
    numbers = {key: run.get(key) for key in ("cpu_seconds", "wall_seconds")}
    for protocol in offline_quality.PROTOCOLS:
        metrics = run.get(protocol)
        if not isinstance(metrics, dict) or type(metrics.get("test_users")) is not int:
            return f"{run['model']} seed {run['seed']} has no {protocol} metrics with test_users"
        for metric in offline_quality.METRICS:
            numbers[f"{protocol} {metric}"] = metrics.get(metric)
        for metric in offline_quality.TABLE_METRICS:  # print_table reads their intervals
            numbers[f"{protocol} {metric}_ci95"] = metrics.get(f"{metric}_ci95")
    bad = [key for key, value in numbers.items() if not is_finite_number(value)]
    if bad:
        value = numbers[bad[0]]
        return f"{run['model']} seed {run['seed']}: {bad[0]} is {value!r}, not a finite number"
    return None


def output_problem(result: Any) -> str | None:
    """What keeps ``result`` from being pooled as an offline_quality output, or None."""
    if not (
        isinstance(result, dict)
        and result.get("benchmark") == "offline_quality"
        and "data" in result
        and isinstance(result.get("settings"), dict)
        and isinstance(result.get("runs"), list)
    ):
        return "not an offline_quality.py output"
    if not result["runs"]:
        return "an offline_quality.py output without runs"
    return next(filter(None, map(run_problem, result["runs"])), None)


def pooled(name: str, paths: list[str]) -> dict[str, Any]:
    """One offline_quality result from the runs of several: the first file's settings with
    every file's models and seeds, and the summary over all the runs."""
    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(
                f"--runs {name}: {path}: not an offline_quality.py output ({err})"
            ) from None
        problem = output_problem(result)
        if problem:
            raise SystemExit(f"--runs {name}: {path}: {problem}")
        results.append((path, result))
    first_path, first = results[0]
    # a setting missing from a file (written before it existed) counts at its default, or at
    # the earlier behaviour where adding it changed the default
    defaults = offline_quality.default_settings() | REMOVED_SETTINGS | ADDED_SETTINGS
    keys = {k for _, r in results for k in r["settings"]} - RUN_SETTINGS - REMOVED_DEPENDENT

    def setting(result: dict[str, Any], key: str) -> Any:
        return result["settings"].get(key, defaults.get(key))

    runs: list[dict[str, Any]] = []
    for path, result in results:
        if result["data"] != first["data"]:
            raise SystemExit(f"--runs {name}: {path} read other data than {first_path}")
        for key in sorted(keys):
            if setting(result, key) != setting(first, key):
                raise SystemExit(
                    f"--runs {name}: {path} trained with {key}={setting(result, key)!r}, "
                    f"{first_path} with {setting(first, key)!r}; pool only runs of the same "
                    "settings"
                )
        for run in result["runs"]:
            if any((r["model"], r["seed"]) == (run["model"], run["seed"]) for r in runs):
                raise SystemExit(
                    f"--runs {name}: {path}: {run['model']} seed {run['seed']} is given twice"
                )
            runs.append(run)
    models = list(dict.fromkeys(r["model"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    settings = first["settings"] | {
        "models": ",".join(models),
        "seeds": ",".join(map(str, seeds)),
        "pooled_from": paths,
    }
    summary = offline_quality.summarise(runs)
    return first | {"settings": settings, "runs": runs, "summary": summary}


def read_peer_result(path: str) -> Any:
    """A peer-gr.sh result: its ``out.json`` (the whole file) or its output (the last line);
    None when the file holds neither."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def peer_figures(paths: list[str]) -> dict[str, Any]:
    """The reference's figure from one or more peer-gr.sh results (its code is unseeded, so
    repeated runs are its seeds): each protocol's last-epoch NDCG@10 as the mean over the
    runs, each run's value and last epoch, and whether the time budget (``PEER_MAX_WALL_S``)
    stopped any run before the epochs it was asked for."""
    finals, stopped = [], False
    for path in paths:
        result = read_peer_result(path)
        final = result.get("final_epoch") if isinstance(result, dict) else None
        if not isinstance(final, dict) or not all(k in final for k in PEER_KEYS.values()):
            raise SystemExit(f"--peer {path}: no peer-gr.sh result (a final_epoch with ndcg@10)")
        bad = [k for k in PEER_KEYS.values() if not is_finite_number(final[k])]
        if bad:
            raise SystemExit(
                f"--peer {path}: final_epoch {bad[0]} is {final[bad[0]]!r}, not a finite number; "
                "that run gives no reference figure"
            )
        finals.append(final)
        stopped |= bool(result.get("stopped_by_time_budget", False))
    by_protocol = {p: [float(f[key]) for f in finals] for p, key in PEER_KEYS.items()}
    return {p: sum(values) / len(values) for p, values in by_protocol.items()} | {
        "runs": by_protocol,
        "epochs": [f.get("epoch") for f in finals],
        "stopped_by_time_budget": stopped,
    }


def table(results: dict[str, dict[str, Any]], peers: dict[str, dict[str, Any]]) -> list[dict]:
    """One row per data set x model x protocol: genrec's NDCG@10 over seeds, the
    reference's, and their ratio (None without a reference)."""
    rows = []
    for name, result in results.items():
        for model, by_protocol in result["summary"].items():
            for protocol in offline_quality.PROTOCOLS:
                ndcg = by_protocol[protocol]["ndcg@10"]
                peer = peers.get(f"{name}:{model}", {})
                reference = peer.get(protocol)
                rows.append(
                    {
                        "set": name,
                        "model": model,
                        "protocol": protocol,
                        "seeds": len([r for r in result["runs"] if r["model"] == model]),
                        "ndcg@10": ndcg["mean"],
                        "ci95": ndcg["ci95"],
                        "reference": reference,
                        "reference_runs": peer.get("runs", {}).get(protocol),
                        "reference_epochs": peer.get("epochs"),
                        "reference_stopped_by_time_budget": peer.get("stopped_by_time_budget"),
                        "ratio": None if not reference else ndcg["mean"] / reference,
                    }
                )
    return rows


# The pair compared by ``model_gaps``: the first's NDCG@10 above the second's (issue 25).
GAP_MODELS = ("hstu", "sasrec")


def model_gaps(results: dict[str, dict[str, Any]]) -> list[dict]:
    """Per data set and protocol: HSTU's NDCG@10 above SASRec's, against the seed spread.

    ``beyond_spread`` holds when the difference of the means exceeds the larger of the two
    models' standard deviations over seeds (None while either model has fewer than 2 seeds: no
    spread is known); the per-seed differences (seeds both models ran) show whether the gap is
    steady or one seed's."""
    high, low = GAP_MODELS
    gaps = []
    for name, result in results.items():
        summary = result["summary"]
        if high not in summary or low not in summary:
            continue
        for protocol in offline_quality.PROTOCOLS:
            a, b = summary[high][protocol]["ndcg@10"], summary[low][protocol]["ndcg@10"]
            by_seed = {
                model: {
                    r["seed"]: r[protocol]["ndcg@10"] for r in result["runs"] if r["model"] == model
                }
                for model in (high, low)
            }
            shared = sorted(set(by_seed[high]) & set(by_seed[low]))
            paired = [by_seed[high][s] - by_seed[low][s] for s in shared]
            difference = a["mean"] - b["mean"]
            known = min(len(by_seed[high]), len(by_seed[low])) >= 2
            gaps.append(
                {
                    "set": name,
                    "protocol": protocol,
                    "models": [high, low],
                    "difference": difference,
                    "std": [a["std"], b["std"]],
                    "seeds": shared,
                    "per_seed": paired,
                    "above_every_seed": bool(paired) and min(paired) > 0,
                    "beyond_spread": difference > max(a["std"], b["std"]) if known else None,
                }
            )
    return gaps


def print_gaps(gaps: list[dict[str, Any]]) -> None:
    err = sys.stderr
    err.write(  # GAP_MODELS' pair
        "\n| data set | protocol | HSTU - SASRec | seed std (HSTU, SASRec) | per seed | "
        "beyond the spread |\n"
    )
    err.write("|---|---|---|---|---|---|\n")
    for g in gaps:
        per_seed = " ".join(f"{d:+.4f}" for d in g["per_seed"])
        verdict = {True: "yes", False: "no", None: "n/a (one seed)"}[g["beyond_spread"]]
        err.write(
            f"| {g['set']} | {g['protocol']} | {g['difference']:+.4f} | "
            f"{g['std'][0]:.4f}, {g['std'][1]:.4f} | {per_seed} | "
            f"{verdict} |\n"
        )
    err.flush()


def print_rows(rows: list[dict[str, Any]]) -> None:
    err = sys.stderr
    err.write("\n| data set | model | protocol | seeds | genrec NDCG@10 | reference | ratio |\n")
    err.write("|---|---|---|---|---|---|---|\n")
    for r in rows:
        ci = "" if math.isnan(r["ci95"]) else f" ± {r['ci95']:.4f}"
        ref = ""
        if r["reference"] is not None:
            stop = ", stopped by time budget" if r["reference_stopped_by_time_budget"] else ""
            runs = len(r["reference_runs"])
            ref = f"{r['reference']:.4f} ({runs} run{'s' if runs > 1 else ''}, epoch "
            ref += f"{'/'.join(map(str, r['reference_epochs']))}{stop})"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        err.write(
            f"| {r['set']} | {r['model']} | {r['protocol']} | {r['seeds']} | "
            f"{r['ndcg@10']:.4f}{ci} | {ref} | {ratio} |\n"
        )
    err.flush()


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    sets = named(args.sets, "--set")
    done = named(args.runs, "--runs")
    both = sorted(set(sets) & set(done))
    if both:
        raise SystemExit(f"--set and --runs both name {both[0]!r}; give each data set once")
    if not sets and not done:
        raise SystemExit("give at least one data set: --set NAME=PATH or --runs NAME=FILE")
    peers = {
        key: peer_figures(paths.split(",")) for key, paths in named(args.peer, "--peer").items()
    }
    unknown = sorted(k for k in peers if k.split(":")[0] not in {*sets, *done})
    if unknown:
        raise SystemExit(f"--peer {unknown[0]}: no --set or --runs of that name")
    results = {name: pooled(name, paths.split(",")) for name, paths in done.items()}
    results |= {
        name: offline_quality.run(offline_quality.parse_args([*rest, "--data", path]))
        for name, path in sets.items()
    }
    rows, gaps = table(results, peers), model_gaps(results)
    print_rows(rows)
    print_gaps(gaps)
    report = {"benchmark": "quality_matrix", "sets": results, "table": rows, "gaps": gaps}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
