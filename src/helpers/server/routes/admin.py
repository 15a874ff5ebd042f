"""The server's own endpoints: ``/health`` (what the notebooks' backend and ``workbook stop`` read) and ``/queue``
(the facilitator's view of the fine-tuning queue, on the server's machine only)."""
from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request

from helpers.server.errors import ApiError
from helpers.server.records import Jobs
from helpers.server.routes.models import SERVER_STARTED
from helpers.server.state import State

router = APIRouter()


@router.get("/health")
def health(state: State) -> dict[str, Any]:
    return {"status": "ok", "started_at": SERVER_STARTED, "data_dir": str(state.store.data_dir), "pid": os.getpid(),
            "training_closed": state.limits.training_closed,
            "inference": dict(state.engine.stats), "models": [m.describe() for m in state.models.loaded()],
            "memory": state.models.memory()}


@router.get("/queue")
def queue(request: Request, state: State) -> dict[str, Any]:
    """The fine-tuning queue, for the facilitator (``workbook queue``): answered on loopback only."""
    if request.client is None or request.client.host not in ("127.0.0.1", "::1", "localhost"):
        raise ApiError(403, "The queue is shown only on the server's own machine (run `workbook queue` there).",
                       kind="permission_error", code="loopback_only")

    def row(job_id: str, position: int | None) -> dict[str, Any]:
        job, owner = Jobs(state.store).get(job_id, None), state.store.owner("job", job_id) or ""
        return {"position": position, "id": job_id, "key": state.labels.get(owner, owner[:8]),
                **{name: getattr(job, name, None) for name in ("status", "model", "created_at", "estimated_finish")}}

    current = state.runner.current
    return {"running": row(current, 0) if current else None,
            "waiting": [row(j, i) for i, j in enumerate(state.runner.waiting(), 1)], "limits": vars(state.limits)}
