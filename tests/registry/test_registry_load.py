"""Loading a crafted registry version (its manifest correctly signed: ``publish`` hashes
whatever it is given) for ``backfill recommend``: every crafted ``config.json`` or
``vocab.npz`` is refused with one line naming the version and file, before anything big is
allocated, through ``load_version`` and through the CLI."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from registry.tiny_version import CONFIG, ROWS, VOCAB, publish

from connectors.registry import Registry, RegistryError
from connectors.registry.published import load_version
from pipeline.cli import main
from pipeline.state.vocab import pack_arrays, unpack_arrays

GIB = 1 << 30


def _hstu(**changes: Any) -> dict[str, Any]:
    return {**CONFIG, "hstu": {**CONFIG["hstu"], **changes}}


def _vocab_with(**arrays: np.ndarray) -> bytes:
    return pack_arrays({**unpack_arrays(VOCAB), **arrays})


def _npz(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str = "<i8") -> bytes:
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _bomb(size: int) -> bytes:
    """A vocab.npz whose extra member inflates from a few KiB to ``size`` bytes."""
    member = _npy_header((size // 8,)) + bytes(size)
    with zipfile.ZipFile(io.BytesIO(VOCAB)) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    return _npz({**members, "evil.npy": member}, zipfile.ZIP_DEFLATED)


# (case, config.json bytes or None for the good one, vocab.npz bytes or None, error fragment)
CASES: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("config-not-json", b"{not json", None, "config.json is not a model config"),
    ("config-array", b"[1, 2]", None, "config.json is not a model config"),
    ("config-unknown-key", json.dumps(_hstu(evil=1)).encode(), None, "hstu.evil: Extra"),
    ("config-unknown-model", json.dumps({**CONFIG, "model": "evil"}).encode(), None, "model:"),
    ("config-no-hstu", json.dumps({"model": "hstu"}).encode(), None, "under 'hstu' only"),
    (
        "config-sasrec-huge-ffn",
        json.dumps(
            {"model": "sasrec", "sasrec": {"num_rows": 10, "ffn_dim": 1 << 20}}
        ).encode(),
        None,
        "sasrec.ffn_dim",
    ),
    (
        "config-dlrm-huge-dim",
        json.dumps({"model": "dlrm", "dlrm": {"num_rows": 10, "dim": 1 << 20}}).encode(),
        None,
        "dlrm.dim",
    ),
    ("config-str-dim", json.dumps(_hstu(embedding_dim="8")).encode(), None, "embedding_dim"),
    ("config-bool-layers", json.dumps(_hstu(num_layers=True)).encode(), None, "num_layers"),
    ("config-huge-rows", json.dumps(_hstu(num_rows=10**11)).encode(), None, "num_rows"),
    ("config-huge-dim", json.dumps(_hstu(embedding_dim=1 << 20)).encode(), None, "embedding_dim"),
    ("config-many-layers", json.dumps(_hstu(num_layers=10**6)).encode(), None, "num_layers"),
    ("config-zero-heads", json.dumps(_hstu(num_heads=0)).encode(), None, "num_heads"),
    ("config-bad-norm", json.dumps(_hstu(layer_norm="evil")).encode(), None, "layer_norm"),
    ("config-nan-alpha", b'{"model": "hstu", "hstu": {"num_rows": 20, "alpha": NaN}}', None, "alpha"),
    # within every bound, but a model far bigger than model.pt: refused before allocation
    ("config-bigger-than-weights", json.dumps(_hstu(num_rows=2**31 - 1)).encode(), None,
     "holds only"),
    ("config-other-shapes", json.dumps(_hstu(embedding_dim=4)).encode(), None, "does not load"),
    ("config-bad-task", json.dumps(_hstu(ranking_tasks=[{"name": "x"}])).encode(), None,
     "needs exactly one positive rule"),
    ("config-zero-hidden", json.dumps(_hstu(ranking_hidden=[0])).encode(), None,
     "ranking_hidden"),
    # a head the weights do not have
    ("config-head-not-in-weights",
     json.dumps(_hstu(ranking_tasks=[{"name": "c", "actions": [2]}], ranking_hidden=[1])).encode(),
     None, "does not load"),
    ("vocab-not-zip", None, b"not a zip archive", "not a numpy .npz archive"),
    ("vocab-pickle", None, _npz({"params.npy": b"\x80\x04K\x01."}), "vocab.npz"),
    ("vocab-object-array", None, _npz({"params.npy": _npy_header((4,), "|O") + bytes(32)}),
     "Python objects"),
    # a 745 GiB array declared in a few bytes
    ("vocab-huge-header", None, _npz({"params.npy": _npy_header((100 * GIB,)) + bytes(64)}),
     "declares"),
    ("vocab-bomb", None, _bomb(64 << 20), "decompress to"),
    ("vocab-no-params", None, pack_arrays({"rows": np.arange(3)}), "no 'params'"),
    ("vocab-capacity", None, _vocab_with(params=np.array([10**12, 1, -1, 5])), "capacity"),
    ("vocab-rows-out-of-range", None, _vocab_with(rows=np.array([10**9])), "not a vocabulary"),
]  # fmt: skip
# The bomb is refused at a limit below its 64 MiB (the default, 1 GiB, refuses a 2 GB one).
MAX_VOCAB_BYTES = 16 << 20


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A registry with one good version and one crafted version per case."""
    path = tmp_path_factory.mktemp("crafted") / "registry"
    registry = Registry.open(path, create=True)
    versions = {"good": publish(registry)}
    for name, config, vocab, _ in CASES:
        versions[name] = publish(registry, config, vocab)
    return path, versions


def test_the_good_version_loads(crafted) -> None:
    path, versions = crafted
    published = load_version(Registry.open(path), versions["good"], MAX_VOCAB_BYTES)
    assert published.model.num_rows == ROWS and published.live.numel() == 10


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_crafted_version_is_refused_in_one_line(crafted, case) -> None:
    path, versions = crafted
    name, _, _, fragment = case
    version = versions[name]
    with pytest.raises(RegistryError) as caught:
        load_version(Registry.open(path), version, MAX_VOCAB_BYTES)
    message = str(caught.value)
    assert f"v{version:06d}" in message and fragment in message, message
    assert "\n" not in message


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("histories")
    t = 1_700_000_000
    events = {"user_id": [1, 1, 2], "item_id": [1, 2, 3], "timestamp": [t, t + 1, t + 2]}
    pq.write_table(pa.table({**events, "action": ["view"] * 3}), root / "a.parquet")
    args = ["backfill", "sequences", "--input", str(root / "a.parquet")]
    assert main([*args, "--out", str(root / "out"), "--shards", "1"]) == 0
    return root / "out"


def test_the_cli_refuses_every_crafted_version_in_one_line(crafted, histories, capsys) -> None:
    path, versions = crafted
    base = ["backfill", "recommend", "--registry", str(path), "--histories", str(histories),
            "--k", "3", "--max-vocab-bytes", str(MAX_VOCAB_BYTES)]  # fmt: skip
    capsys.readouterr()
    for name, _, _, fragment in CASES:
        out = path.parent / f"out-{name}"
        assert main([*base, "--out", str(out), "--version", str(versions[name])]) == 1, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("genrec backfill recommend: error: ") and fragment in err, err
        assert "\n" not in err and "Traceback" not in err, err
    out = path.parent / "out-good"
    assert main([*base, "--out", str(out), "--version", str(versions["good"])]) == 0
    assert list(out.glob("part-*.parquet"))
