"""``genrec serve`` following a real topic: a user's new events shape their next answer
within seconds (independent of publishing), a new version changes it too, and records that
do not validate are counted, never fatal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from serving import T0, recommend, serving
from waiting import WAIT_S
from waits import wait_until

from bench.serve_latency import publish_version
from pipeline.events import encode_json
from pipeline.events.schema import Event

pytestmark = pytest.mark.kafka


def send(producer: KafkaProducer, topic: str, user: int, items: list[int], start: int) -> None:
    for n, item in enumerate(items):
        event = Event(user_id=user, item_id=item, timestamp=start + n, action="click")
        producer.send(
            topic, encode_json(event), key=str(user).encode(), headers=[("codec", b"json")]
        )
    producer.flush()


def test_served_answers_follow_the_users_events_and_the_versions(
    kafka_bootstrap: str, create_topic, tmp_path: Path
) -> None:
    topic = create_topic(partitions=2)
    registry = tmp_path / "registry"
    publish_version(registry, 300, dim=16)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send(producer, topic, 7, [3, 14, 15], T0)
    stream = {
        "stream": "kafka",
        "kafka": {"topic": topic, "bootstrap_servers": kafka_bootstrap, "group_id": topic},
    }
    try:
        with serving(registry, history=stream) as (base, service):
            first = wait_until(
                lambda: (
                    (r := recommend(base, user_id=7, k=10)).json().get("history_length") == 3
                    and r.json()
                ),
                WAIT_S,
                "user 7's first three events in the served history",
            )
            assert first["version"] == 1

            sent = time.monotonic()
            send(producer, topic, 7, [92, 65], T0 + 100)
            fresh = wait_until(
                lambda: (
                    (r := recommend(base, user_id=7, k=10)).json().get("history_length") == 5
                    and r.json()
                ),
                10,
                "user 7's new events in the served history",
                interval_s=0.01,
            )
            seconds = time.monotonic() - sent
            print(f"event -> served history: {seconds:.3f} s")
            assert seconds < 5.0  # about a second on a quiet machine; this one is shared
            assert fresh["version"] == 1 and fresh["items"] != first["items"]
            assert not {92, 65} & {entry["item_id"] for entry in fresh["items"]}

            version = publish_version(registry, 300, seed=1, dim=16)
            newer = wait_until(
                lambda: (
                    (r := recommend(base, user_id=7, k=10)).json()["version"] == version
                    and r.json()
                ),
                30,
                f"version {version} to serve",
            )
            assert newer["history_length"] == 5 and newer["items"] != fresh["items"]

            producer.send(topic, b"{not json", headers=[("codec", b"json")])
            send(producer, topic, 8, [1], T0)
            wait_until(
                lambda: recommend(base, user_id=8, k=3).status_code == 200,
                10,
                "user 8's event after a bad record",
            )
            assert service.feed is not None and service.feed.rejected == 1
    finally:
        producer.close()
