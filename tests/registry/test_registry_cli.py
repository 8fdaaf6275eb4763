"""``genrec registry ...`` through pipeline.cli.main, with --json and the human table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.registry import Registry
from pipeline import cli


@pytest.fixture(autouse=True)
def only_registry_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other command modules belong to other packages; keep these tests independent of them.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("connectors.registry.commands",))
    monkeypatch.delenv("GENREC_REGISTRY", raising=False)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry.open(tmp_path / "reg", create=True)
    registry.publish({"model.pt": b"one"}, metrics={"ndcg@10": 0.25}, watermark=1000)
    registry.publish({"model.pt": b"two"}, parent=1, source_positions={"events:0": 5})
    registry.publish({"model.pt": b"three"}, parent=2)
    return registry


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert cli.main(["registry", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_and_table(registry: Registry, tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "reg")
    registry.promote(1, "prod")
    rows = _run_json(capsys, "list", "--registry", root)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["prod"]), (2, []), (3, ["latest"])]
    assert rows[0]["metrics"] == {"ndcg@10": 0.25} and rows[1]["parent"] == 1

    assert cli.main(["registry", "list", "--registry", root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "CREATED"]
    assert lines[1].startswith("v000001") and lines[1].endswith("prod")
    assert "ndcg@10=0.25" in lines[1] and "3 B" in lines[1]
    assert lines[3].startswith("v000003") and lines[3].endswith("latest")


def test_show_promote_rollback_gc(registry: Registry, tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "reg")
    shown = _run_json(capsys, "show", "v2", "--registry", root)
    assert shown["manifest"]["source_positions"] == {"events:0": 5}
    assert shown["alias"] is None

    record = _run_json(capsys, "promote", "1", "prod", "--registry", root)
    assert (record["alias"], record["version"]) == ("prod", 1)
    record = _run_json(capsys, "promote", "latest", "prod", "--registry", root)
    assert (record["version"], record["previous"]) == (3, [1])
    shown = _run_json(capsys, "show", "prod", "--registry", root)
    assert shown["manifest"]["version"] == 3 and shown["alias"]["previous"] == [1]

    record = _run_json(capsys, "rollback", "prod", "--registry", root)
    assert record["version"] == 1
    assert Registry.open(root).show("prod").version == 1

    planned = _run_json(capsys, "gc", "--keep", "1", "--dry-run", "--registry", root)
    assert planned == {"removed": [], "partial": [], "dry_run": True}  # 1 prod, 2/3 latest
    registry.publish({"model.pt": b"four"})
    result = _run_json(capsys, "gc", "--keep", "1", "--registry", root)
    assert result == {"removed": [2], "partial": [], "dry_run": False}
    assert [m.version for m in Registry.open(root).list_versions()] == [1, 3, 4]


def test_registry_from_environment(registry: Registry, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("GENREC_REGISTRY", (tmp_path / "reg").as_uri())
    rows = _run_json(capsys, "list")
    assert [r["version"] for r in rows] == [1, 2, 3]


def test_errors_exit_1_with_a_message(registry: Registry, tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "reg")
    assert cli.main(["registry", "show", "9", "--registry", root]) == 1
    assert "v000009 is not a published version" in capsys.readouterr().err
    assert cli.main(["registry", "rollback", "prod", "--registry", root]) == 1
    assert "no alias 'prod'" in capsys.readouterr().err
    assert cli.main(["registry", "list", "--registry", str(tmp_path / "nowhere")]) == 1
    assert "no registry at" in capsys.readouterr().err


def test_help_texts(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["registry", "gc", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--keep" in out and "GENREC_REGISTRY" in out and "--dry-run" in out
    assert cli.main(["registry"]) == 2  # no subcommand: prints help
    assert "rollback" in capsys.readouterr().out


def test_list_fits_the_terminal_and_shows_the_watermark_in_utc(tmp_path: Path, capsys) -> None:
    root = tmp_path / "reg"
    registry = Registry.open(root, create=True)
    metrics = {"ndcg@10": 0.17234, "hr@10": 0.30971, "mrr": 0.1, "loss": 1.25, "events_per_s": 9e4}
    positions = {f"events-with-a-long-topic-name:{p}": 10**12 for p in range(64)}
    registry.publish(
        {"model.pt": bytes(5_000_000)},
        metrics=metrics,
        source_positions=positions,
        watermark=1_796_119_200,
    )
    registry.promote(1, "production-canary-europe-west-1")

    assert cli.main(["registry", "list", "--registry", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 120, lines
    assert "WATERMARK (UTC)" in lines[0] and "2026-12-01T10:00:00Z" in lines[1]
    assert "1796119200" not in lines[1]
    assert "ndcg@10=0.172 +4" in lines[1]  # the key metric first, the rest counted
    assert " 64 " in lines[1] and lines[1].endswith("latest,produc...")

    assert cli.main(["registry", "show", "1", "--registry", str(root)]) == 0
    shown = capsys.readouterr().out
    assert "watermark:        2026-12-01T10:00:00Z (1796119200)" in shown
    assert "metric events_per_s: 90000" in shown and "events-with-a-long-topic-name:63" in shown
