"""``genrec serve`` over real HTTP, histories from the request only (no stream): answers,
new versions (hot reload, refused versions) and bad requests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch
from serving import T0, clicks, recommend, serving
from waits import wait_until

from bench.serve_latency import publish_version
from connectors.registry import Registry
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream import rowdelta
from pipeline.stream.checkpoint import state_from_bytes, state_to_bytes
from pipeline.stream.publishing import MODEL_FILE, ROWS_FILE, VOCAB_FILE

ITEMS = 300
HISTORY = clicks([3, 14, 15, 92, 65])


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    publish_version(path, ITEMS, seed=0, dim=16)
    return path


def served_version(base: str) -> int:
    return recommend(base, user_id=1, k=5, history=HISTORY).json()["version"]


def test_recommend_and_rank_answer_from_the_request_history(registry: Path) -> None:
    with serving(registry) as (base, _):
        got = recommend(base, user_id="u1", k=7, history=HISTORY)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["version"] == 1 and body["history_length"] == 5 and body["user_id"] == "u1"
        items = [entry["item_id"] for entry in body["items"]]
        scores = [entry["score"] for entry in body["items"]]
        assert len(items) == 7 and scores == sorted(scores, reverse=True)
        assert not set(items) & {3, 14, 15, 92, 65}  # seen items left out by default
        kept = recommend(base, user_id="u1", k=ITEMS, history=HISTORY, exclude_seen=False)
        assert {3, 14, 15, 92, 65} <= {entry["item_id"] for entry in kept.json()["items"]}
        # a newer event changes the answer: the history shapes the query
        longer = recommend(base, user_id="u1", k=7, history=[*HISTORY, *clicks([200], T0 + 999)])
        assert longer.json()["history_length"] == 6
        assert [e["item_id"] for e in longer.json()["items"]] != items

        ranked = httpx.post(
            f"{base}/rank",
            json={"user_id": "u1", "candidates": [items[0], 7, "nope"], "history": HISTORY},
        )
        assert ranked.status_code == 200, ranked.text
        scores_of = ranked.json()["scores"]
        assert ranked.json()["tasks"] == ["click"]
        assert [s["item_id"] for s in scores_of] == [items[0], 7, "nope"]
        assert all(0 < s["probabilities"]["click"] < 1 for s in scores_of[:2])
        assert scores_of[2]["probabilities"] is None  # an item the version does not know

        for path in ("/healthz", "/readyz"):
            assert httpx.get(base + path).status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert "genrec_serve_version 1.0" in metrics
        assert 'genrec_serve_request_seconds_count{route="/recommend",status="200"} 3.0' in metrics


def test_a_version_without_ranking_heads_refuses_rank(tmp_path: Path) -> None:
    publish_version(tmp_path / "registry", ITEMS, dim=16, tasks=())
    with serving(tmp_path / "registry") as (base, _):
        got = httpx.post(f"{base}/rank", json={"user_id": 1, "candidates": [1], "history": HISTORY})
        assert got.status_code == 409 and "no ranking heads" in got.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"user_id": 404}, 404, "has no history here"),
        ({"user_id": 1, "k": 10**9, "history": HISTORY}, 422, "http.max_k"),
        ({"user_id": 1, "k": 0, "history": HISTORY}, 422, "k: 0 is not in"),
        ({"user_id": 1, "k": "5"}, 422, "k: Input should be a valid integer"),
        ({"user_id": [1]}, 422, "user_id"),
        ({"user_id": ""}, 422, "user_id"),
        ({"user_id": 1, "surprise": 1}, 422, "surprise: Extra inputs are not permitted"),
        ({"user_id": 1, "history": clicks(list(range(1001)))}, 413, "http.max_history"),
        ({"user_id": 1, "history": [{"item_id": 1}]}, 422, "history[0]: required field"),
        ({"user_id": 1, "history": [{**HISTORY[0], "timestamp": 5}]}, 422, "history[0]"),
        ({"user_id": 1, "history": "no"}, 422, "history: Input should be a valid array"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(
    registry: Path, body: dict, status: int, message: str
) -> None:
    with serving(registry) as (base, _):
        got = recommend(base, **body)
        assert got.status_code == status, got.text
        assert message in got.json()["detail"]
        assert served_version(base) == 1  # the server goes on


def test_malformed_and_oversized_bodies(registry: Path) -> None:
    with serving(registry, http={"max_body_bytes": 8192}) as (base, _):
        for content, status, message in (
            (b"{not json", 422, "Invalid JSON"),
            (b"[1, 2]", 422, "Input should be an object"),
            (b"", 422, "Invalid JSON"),
            (b'{"user_id": 1, "k": ' + b"9" * 9000 + b"}", 413, "http.max_body_bytes"),
        ):
            got = httpx.post(f"{base}/recommend", content=content)
            assert got.status_code == status, (content[:40], got.text)
            assert message in got.json()["detail"]
        too_many = {"user_id": 1, "candidates": list(range(1001)), "history": HISTORY}
        got = httpx.post(f"{base}/rank", json=too_many)
        assert got.status_code == 413 and "http.max_candidates" in got.json()["detail"]
        got = httpx.post(f"{base}/rank", json={**too_many, "candidates": []})
        assert got.status_code == 422 and "candidates: none given" in got.json()["detail"]
        assert httpx.get(f"{base}/healthz").status_code == 200


def republish(registry: Path, damage: str) -> int:
    """A copy of version 1 with ``damage``: ``nan`` (a weight NaN, checksums valid) or
    ``config`` (a config.json describing a bigger model than the weights)."""
    reg = Registry.open(str(registry))
    weights = state_from_bytes(reg.read_file(1, MODEL_FILE))
    config = json.loads(reg.read_file(1, "config.json"))
    if damage == "nan":
        name = next(n for n, t in weights.items() if t.is_floating_point())
        weights[name].view(-1)[0] = float("nan")
    else:
        config["hstu"]["num_layers"] = 8
    files = {MODEL_FILE: state_to_bytes(weights), VOCAB_FILE: reg.read_file(1, VOCAB_FILE)}
    return reg.publish(files, config=config).version


def corrupt(registry: Path, version: int) -> None:
    """Flip the bytes of a published version's weights (its checksum no longer matches)."""
    path = registry / "versions" / f"v{version:06d}" / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["checksum", "nan", "config"])
def test_a_damaged_version_is_refused_and_the_old_one_serves(registry: Path, damage: str) -> None:
    # The server follows "prod", promoted only once a version is damaged: it never sees
    # the version before the damage.
    reg = Registry.open(str(registry))
    reg.promote(1, "prod")
    with serving(registry, alias="prod") as (base, service):
        before = recommend(base, user_id=1, k=5, history=HISTORY).json()
        if damage == "checksum":
            version = publish_version(registry, ITEMS, seed=5, dim=16)
            corrupt(registry, version)
        else:
            version = republish(registry, damage)
        reg.promote(version, "prod")
        wait_until(lambda: version in service.follower.refused, 30, f"v{version} refused")
        after = recommend(base, user_id=1, k=5, history=HISTORY)
        assert after.status_code == 200 and after.json() == before
        assert httpx.get(f"{base}/readyz").json()["version"] == 1
        assert "genrec_serve_versions_refused 1.0" in httpx.get(f"{base}/metrics").text
        fixed = publish_version(registry, ITEMS, seed=6, dim=16)  # the next good one serves
        reg.promote(fixed, "prod")
        wait_until(lambda: served_version(base) == fixed, 30, f"v{fixed} to serve")


async def hammer(base: str, stop: asyncio.Event) -> list[tuple[int, int | None, float]]:
    """Requests from 8 concurrent clients until ``stop``: (status, version, seconds)."""
    results: list[tuple[int, int | None, float]] = []

    async def client(user: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while not stop.is_set():
                started = asyncio.get_running_loop().time()
                got = await http.post(
                    "/recommend", json={"user_id": user, "k": 10, "history": HISTORY}
                )
                took = asyncio.get_running_loop().time() - started
                version = got.json().get("version") if got.status_code == 200 else None
                results.append((got.status_code, version, took))

    await asyncio.gather(*(client(user) for user in range(8)))
    return results


def test_hot_reload_under_concurrent_requests_drops_none(registry: Path) -> None:
    with serving(registry) as (base, service):

        async def run() -> list[tuple[int, int | None, float]]:
            stop = asyncio.Event()
            load = asyncio.create_task(hammer(base, stop))
            for seed in (1, 2):
                await asyncio.sleep(0.5)
                version = await asyncio.to_thread(
                    publish_version, registry, ITEMS, seed=seed, dim=16
                )
                while served_version(base) != version:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            stop.set()
            return await load

        results = asyncio.run(run())
    statuses = {status for status, _, _ in results}
    versions = [version for _, version, _ in results]
    assert statuses == {200}, statuses
    assert {1, 2, 3} <= set(versions)
    assert versions == sorted(versions)  # once swapped, never an older version again
    assert service.follower.swaps == 3
    assert max(took for _, _, took in results) < 5.0


def test_a_registry_without_versions_is_unready_until_one_is_published(tmp_path: Path) -> None:
    Registry.open(str(tmp_path / "registry"), create=True)
    with serving(tmp_path / "registry") as (base, _):
        ready = httpx.get(f"{base}/readyz")
        assert (
            ready.status_code == 503 and "cannot resolve alias 'latest'" in ready.json()["detail"]
        )
        got = recommend(base, user_id=1, history=HISTORY)
        assert got.status_code == 503 and "no model version is loaded yet" in got.json()["detail"]
        publish_version(tmp_path / "registry", ITEMS, dim=16)
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "a version")
        assert served_version(base) == 1


def test_a_delta_version_serves_through_its_chain(registry: Path) -> None:
    """A delta (the item rows changed since version 1, plus the dense weights) is loaded
    through the registry's verified chain and served like a full version."""
    reg = Registry.open(str(registry))
    weights = state_from_bytes(reg.read_file(1, MODEL_FILE))
    with serving(registry) as (base, _):
        before = recommend(base, user_id=1, k=5, history=HISTORY).json()
        best = before["items"][0]["item_id"]
        # the best item's row moves away from the query: it drops out of the top 5
        row = int(ItemVocabulary.restore(reg.read_file(1, VOCAB_FILE)).lookup([best])[0])
        weights["item_emb.weight"][row] = -weights["item_emb.weight"][row]
        rest, changed = rowdelta.split({"model": weights}, torch.tensor([row]))
        files = {
            MODEL_FILE: state_to_bytes(rest["model"]),
            ROWS_FILE: state_to_bytes(changed),
            VOCAB_FILE: reg.read_file(1, VOCAB_FILE),
        }
        config = json.loads(reg.read_file(1, "config.json"))
        delta = reg.publish(files, config=config, parent=1, delta_of=1).version
        after = wait_until(
            lambda: (
                (r := recommend(base, user_id=1, k=5, history=HISTORY).json())["version"] == delta
                and r
            ),
            30,
            f"delta version {delta} to serve",
        )
        assert best not in [entry["item_id"] for entry in after["items"]]
