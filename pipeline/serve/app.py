"""The HTTP JSON service of ``genrec serve`` (FastAPI on uvicorn).

Routes:

- ``POST /recommend`` ``{"user_id", "k": 10, "exclude_seen": true, "history": [...]}`` ->
  ``{"user_id", "version", "history_length", "items": [{"item_id", "score"}]}``: exact top
  K over the version's item table, the user's seen items left out unless
  ``exclude_seen`` is false;
- ``POST /rank`` ``{"user_id", "candidates": [...], "history": [...]}`` -> ``{"user_id",
  "version", "history_length", "tasks", "scores": [{"item_id", "probabilities"}]}``: every
  ranking task's probability per candidate (``null`` for an item the version does not
  know);
- ``GET /healthz`` (the process answers), ``GET /readyz`` (a version serves: 200, else
  503), ``GET /metrics`` (Prometheus).

``history`` is a list of events in the event schema (``item_id``, ``action``,
``timestamp``, optional ``value``; ``docs/events.md``), validated by the pipeline's own
decoder, that extends the user's stored history for this request only. Bodies are read up
to ``http.max_body_bytes`` (413 beyond), parsed strictly (422 with the field and the
problem); an unknown user (no stored history, none in the request) is a 404; a full queue
a 503. Each error body is ``{"detail": "one line"}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.events import EventBatch, EventError, SourceRecord, canonical_key, decode_records
from pipeline.serve.batcher import Overloaded
from pipeline.serve.service import Service
from pipeline.serve.version import RankQuery, RecommendQuery, RequestError
from pipeline.state.keyindex import Key

log = logging.getLogger(__name__)


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int | str
    k: int = 10
    exclude_seen: bool = True
    history: list[dict[str, Any]] | None = None


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int | str
    candidates: list[int | str]
    history: list[dict[str, Any]] | None = None


async def read_body(request: Request, model: type[BaseModel], limit: int) -> Any:
    """The body as ``model``: 413 past ``limit`` bytes, 422 when it is not valid."""
    too_big = HTTPException(413, f"the body is over {limit} bytes (http.max_body_bytes)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as err:
        raise HTTPException(422, _validation_line(err)) from None


def user_key(raw: int | str) -> Key:
    try:
        return canonical_key(raw, "user_id")
    except EventError as err:
        raise HTTPException(422, f"user_id: {err.message}") from None


def history_events(
    user: int | str, events: list[dict[str, Any]] | None, limit: int
) -> EventBatch | None:
    """The request's events, validated as the stream's are (``decode_records``)."""
    if events is None:
        return None
    if len(events) > limit:
        raise HTTPException(
            413, f"history has {len(events)} events, over the limit of {limit} (http.max_history)"
        )
    records = [
        SourceRecord(json.dumps({**event, "user_id": user}).encode(), "json", "history", n)
        for n, event in enumerate(events)
    ]
    decoded = decode_records(records)
    if decoded.rejects:
        first = decoded.rejects[0]
        raise HTTPException(422, f"history[{first.offset}]: {first.message}")
    return decoded.events


def _validation_line(err: ValidationError) -> str:
    problems = []
    for e in err.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in e["loc"])
        problems.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
    return "; ".join(problems)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service``; its lifespan starts and stops the batchers,
    the version follower and the history feed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="genrec serve", lifespan=lifespan)
    metrics = service.metrics
    http = service.cfg.http

    async def answer(route: str, work: Any) -> JSONResponse:
        started = time.perf_counter()
        status = 200
        try:
            return JSONResponse(await work())
        except HTTPException as err:
            status = err.status_code
            raise
        except RequestError as err:
            status = err.status
            raise HTTPException(err.status, err.message) from None
        except Overloaded as err:
            status = 503
            raise HTTPException(503, f"overloaded: {err}; retry later") from None
        except Exception as err:
            status = 500
            log.exception("%s failed", route)
            raise HTTPException(500, f"internal error: {type(err).__name__}") from None
        finally:
            metrics.observe(route, status, time.perf_counter() - started)

    @app.post("/recommend")
    async def post_recommend(request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            body = await read_body(request, RecommendBody, http.max_body_bytes)
            limit = http.max_k
            if not 1 <= body.k <= limit:
                raise HTTPException(422, f"k: {body.k} is not in 1..{limit} (http.max_k)")
            query = RecommendQuery(
                user_key(body.user_id), body.k, body.exclude_seen,
                history_events(body.user_id, body.history, http.max_history),
            )  # fmt: skip
            found = await service.recommender.submit(query)
            return {
                "user_id": query.user,
                "version": found.version,
                "history_length": found.history_length,
                "items": [
                    {"item_id": item, "score": score}
                    for item, score in zip(found.items, found.scores, strict=True)
                ],
            }

        return await answer("/recommend", work)

    @app.post("/rank")
    async def post_rank(request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            body = await read_body(request, RankBody, http.max_body_bytes)
            limit = http.max_candidates
            if not body.candidates:
                raise HTTPException(422, "candidates: none given; send the items to rank")
            if len(body.candidates) > limit:
                raise HTTPException(
                    413, f"candidates: {len(body.candidates)} given, over the limit of {limit} "
                    "(http.max_candidates)",
                )  # fmt: skip
            try:
                candidates = [canonical_key(c, "candidates") for c in body.candidates]
            except EventError as err:
                raise HTTPException(422, f"candidates: {err.message}") from None
            query = RankQuery(
                user_key(body.user_id), candidates,
                history_events(body.user_id, body.history, http.max_history),
            )  # fmt: skip
            found = await service.ranker.submit(query)
            return {
                "user_id": query.user,
                "version": found.version,
                "history_length": found.history_length,
                "tasks": found.tasks,
                "scores": [
                    {
                        "item_id": item,
                        "probabilities": None
                        if probs is None
                        else dict(zip(found.tasks, probs, strict=True)),
                    }
                    for item, probs in zip(candidates, found.probabilities, strict=True)
                ],
            }

        return await answer("/rank", work)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        served = service.follower.current
        if served is None:
            reason = service.follower.last_error or "no model version is loaded yet"
            return JSONResponse({"detail": reason}, status_code=503)
        return JSONResponse({"status": "ready", "version": served.version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app
