"""``genrec registry list|show|promote|rollback|gc``: inspect and manage the model registry.

Every subcommand takes ``--registry URI`` (default: ``$GENREC_REGISTRY`` or ``./registry``; a
local path, ``file://``, ``s3://``, ``gs://`` or ``hdfs://``), ``--model NAME`` (default: the
registry's only model) and ``--json`` for machine-readable output. Errors print one line to stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline.commands.backfill import add_model_argument, add_registry_argument

# Widest cells of `registry list` (longer ones end in "..."), and how many metrics it shows
# (one: `registry show` has them all).
METRICS_WIDTH = 32
ALIASES_WIDTH = 16
LIST_METRICS = 1
# Metrics `registry list` shows first, by name prefix.
KEY_METRIC_PREFIXES = ("ndcg", "hr", "mrr", "recall", "loss")


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_registry_argument(common)
    add_model_argument(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = subparsers.add_parser(
        "registry",
        help="list, inspect, promote, roll back and garbage-collect model versions",
        description="Manage the model registry: named models (one per training run), each "
        "with immutable numbered versions (v000001, ...) with checksummed manifests, and "
        "movable aliases ('latest' follows every publish of that model).",
    )
    commands = parser.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)

    list_parser = commands.add_parser(
        "list",
        parents=[common],
        help="list published versions with their aliases",
        description="List complete versions, oldest first: creation time, parent, event-time "
        "watermark (UTC), size, the key metrics, the number of source partitions and the "
        "aliases pointing at each ('show' prints everything). Partial versions "
        "(interrupted publishes) are not shown.",
    )
    list_parser.set_defaults(func=_run(_list))

    show = commands.add_parser(
        "show",
        parents=[common],
        help="show one version's manifest (and an alias's history)",
        description="Print the manifest of a version: source positions, watermark, metrics, "
        "and each file's size and sha256. Given an alias, also its rollback stack and history.",
    )
    show.add_argument("ref", metavar="VERSION_OR_ALIAS", help="e.g. 3, v000003, latest, prod")
    show.set_defaults(func=_run(_show))

    promote = commands.add_parser(
        "promote",
        parents=[common],
        help="point an alias at a version",
        description="Point ALIAS at VERSION (creating the alias if needed). The alias's old "
        "target is remembered, so 'rollback ALIAS' undoes this.",
    )
    promote.add_argument("version", metavar="VERSION", help="version number, vNNNNNN or alias")
    promote.add_argument("alias", metavar="ALIAS", help="alias name, e.g. prod")
    promote.set_defaults(func=_run(_promote))

    rollback = commands.add_parser(
        "rollback",
        parents=[common],
        help="move an alias back to its previous target",
        description="Move ALIAS back to the version it pointed at before its last promote or "
        "publish. Repeat to go further back.",
    )
    rollback.add_argument("alias", metavar="ALIAS", help="alias to move back, e.g. prod")
    rollback.set_defaults(func=_run(_rollback))

    gc = commands.add_parser(
        "gc",
        parents=[common],
        help="delete old versions and abandoned partial publishes",
        description="Keep the newest KEEP versions plus every alias's current and previous "
        "target; delete the rest. Also delete partial versions whose publisher died (same "
        "host) or started more than --grace seconds ago. Holds the writer lock, so a promote "
        "or rollback waits for it (and gc waits for a running publish).",
    )
    gc.add_argument("--keep", type=int, required=True, help="number of newest versions to keep")
    gc.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="age after which another host's partial publish counts as abandoned (default 3600)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.set_defaults(func=_run(_gc))


def _run(command):
    """Wrap a subcommand: open the registry, turn registry errors into exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from connectors.registry import Registry, RegistryError

        try:
            return command(Registry.open(args.registry, model=args.model), args)
        except (RegistryError, ValueError) as err:
            print(f"genrec registry {args.registry_command}: error: {err}", file=sys.stderr)
            return 1

    return run


def _list(registry, args: argparse.Namespace) -> int:
    manifests = registry.list_versions()
    by_version: dict[int, list[str]] = {}
    for name, record in registry.aliases().items():
        by_version.setdefault(record.version, []).append(name)
    if args.json:
        rows = [{**_dump(m), "aliases": by_version.get(m.version, [])} for m in manifests]
        _print_json(rows)
        return 0
    # Each cell is capped so that a row fits ~120 columns; `show` prints everything.
    table = [
        [
            m.name,
            m.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            _vname(m.parent),
            _utc(m.watermark),
            _human_size(m.total_size),
            _clip(_key_metrics(m.metrics), METRICS_WIDTH),
            str(len(m.source_positions)) if m.source_positions else "-",
            _clip(",".join(by_version.get(m.version, [])) or "-", ALIASES_WIDTH),
        ]
        for m in manifests
    ]
    header = ["VERSION", "CREATED (UTC)", "PARENT", "WATERMARK (UTC)", "SIZE", "METRICS", "SRC"]
    _print_table([*header, "ALIASES"], table)
    if not manifests:
        print(f"(no published versions of model {registry.model} in {registry.location})")
    return 0


def _show(registry, args: argparse.Namespace) -> int:
    from connectors.registry.manifest import parse_version_ref

    alias = None if parse_version_ref(args.ref) is not None else registry.alias(args.ref)
    manifest = registry.show(args.ref)
    if args.json:
        _print_json({"manifest": _dump(manifest), "alias": alias and _dump(alias)})
        return 0
    print(f"{manifest.name}  created {manifest.created_at.isoformat()}")
    print(f"  parent:           {_vname(manifest.parent)}")
    base = manifest.delta_of
    print(f"  delta of:         {'- (a full version)' if base is None else _vname(base.version)}")
    watermark = manifest.watermark
    shown = "-" if watermark is None else f"{_utc(watermark)} ({watermark})"
    print(f"  watermark:        {shown}")
    positions = manifest.source_positions
    print(f"  source positions: {json.dumps(positions, sort_keys=True) if positions else '-'}")
    for name, value in sorted(manifest.metrics.items()):
        print(f"  metric {_printable(name)}: {value:.6g}")
    rows = [[n, _human_size(e.size), e.sha256] for n, e in sorted(manifest.files.items())]
    _print_table(["FILE", "SIZE", "SHA256"], rows)
    if alias is not None:
        stack = _names(tuple(alias.previous))
        print(f"alias {alias.alias} -> {_vname(alias.version)}; rollback stack: {stack}")
        for move in alias.history:
            print(f"  {move.at.isoformat()}  {move.action:<8}  {_vname(move.version)}")
    return 0


def _promote(registry, args: argparse.Namespace) -> int:
    record = registry.promote(args.version, args.alias)
    _print_alias(record, args.json, "promoted")
    return 0


def _rollback(registry, args: argparse.Namespace) -> int:
    record = registry.rollback(args.alias)
    _print_alias(record, args.json, "rolled back")
    return 0


def _gc(registry, args: argparse.Namespace) -> int:
    result = registry.gc(args.keep, dry_run=args.dry_run, grace_s=args.grace)
    if args.json:
        _print_json(
            {"removed": result.removed, "partial": result.partial, "dry_run": result.dry_run}
        )
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    print(f"{verb} {len(result.removed)} version(s): {_names(result.removed)}")
    print(f"{verb} {len(result.partial)} partial version(s): {_names(result.partial)}")
    return 0


def _print_alias(record, as_json: bool, verb: str) -> None:
    if as_json:
        _print_json(_dump(record))
    else:
        print(f"{verb} {record.alias} -> {_vname(record.version)}")


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _utc(epoch_s: int | None) -> str:
    """Epoch seconds as ISO 8601 UTC (``2026-12-01T10:00:00Z``); raw if out of range."""
    if epoch_s is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(epoch_s)


def _key_metrics(metrics: dict[str, float]) -> str:
    """Up to LIST_METRICS metrics, ranking ones (ndcg, hr, ...) first; "+N" for the rest."""

    def rank(name: str) -> tuple[int, str]:
        lowered = name.lower()
        prefixes = KEY_METRIC_PREFIXES
        return next(
            (i for i, p in enumerate(prefixes) if lowered.startswith(p)), len(prefixes)
        ), name

    names = sorted(metrics, key=rank)
    shown = [f"{_printable(n)}={metrics[n]:.3g}" for n in names[:LIST_METRICS]]
    if len(names) > LIST_METRICS:
        shown.append(f"+{len(names) - LIST_METRICS}")
    return " ".join(shown) or "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _printable(text: str) -> str:
    # Names come from a manifest on storage: never let control characters reach the terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _vname(version: int | None) -> str:
    from connectors.registry.manifest import version_dir_name

    return "-" if version is None else version_dir_name(version)


def _names(versions: tuple[int, ...]) -> str:
    return ", ".join(_vname(v) for v in versions) or "-"


def _human_size(size: int) -> str:
    value, unit = float(size), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
