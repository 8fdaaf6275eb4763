"""``genrec serve``'s settings: defaults < YAML < ``GENREC_SERVE__`` variables < flags, errors
as one line naming where; the trainer never reads the server's variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.serve.config import load_serve_config
from pipeline.stream.config import ConfigError, load_config


def test_layers_and_their_precedence(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("alias: prod\nhttp:\n  port: 9000\n  max_k: 50\n")
    env = {"GENREC_SERVE__HTTP__PORT": "9100", "GENREC_SERVE__REGISTRY": "/r"}
    cfg = load_serve_config(path, {"http": {"max_k": 20}}, environ=env)
    assert (cfg.alias, cfg.registry, cfg.http.port, cfg.http.max_k) == ("prod", "/r", 9100, 20)
    kafka = cfg.source_config().source.kafka
    assert kafka.group_id == "genrec-serve"  # its own group, never the trainer's
    # the trainer ignores the server's variables (and would refuse them as unknown keys)
    assert load_config(environ=env).registry.uri == load_config(environ={}).registry.uri


def test_errors_name_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean GENREC_SERVE__HTTP__PORT\?"):
        load_serve_config(environ={"GENREC_SERVE__HTTP__PROT": "1"})
    with pytest.raises(ConfigError, match=r"batching.max_batch: Input should be greater"):
        load_serve_config(overrides={"batching": {"max_batch": 0}}, environ={})
    path = tmp_path / "serve.yaml"
    path.write_text("history:\n  stream: kafak\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: history.stream: Input should be"):
        load_serve_config(path, environ={})


def test_cli_prints_the_config_and_refuses_a_missing_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--print-config", "--port", "9001", "--set", "alias=prod"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["http"]["port"] == 9001 and printed["alias"] == "prod"
    missing = tmp_path / "nope"
    assert main(["serve", "--registry", str(missing), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"genrec serve: error: registry: no registry at local:{missing}:")
    assert "Traceback" not in "\n".join(err)
