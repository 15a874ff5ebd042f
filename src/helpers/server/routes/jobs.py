"""``/v1/fine_tuning/jobs``: create (checked, then queued fairly across keys), list, get, cancel, events,
checkpoints. Pausing is not offered."""
from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request

from helpers.pricing import catalogue
from helpers.server.errors import ApiError, bad_request, not_found
from helpers.server.jobs import ORGANIZATION
from helpers.server.protocol import MAX_SEED, CreateJob, page
from helpers.server.queries import limit_param, metadata_filter, metadata_matches
from helpers.server.records import CheckpointRecord, JobRecord, Jobs, JobStatus, ModelRecord, hyperparameter_fields
from helpers.server.routes.models import grader_models, tuned_model
from helpers.server.state import Owner, ServerState, State, json_body, parsed
from helpers.server.store import new_id, now

router = APIRouter(prefix="/v1/fine_tuning/jobs")
TRAINING_CLOSED = ("Fine-tuning is not available to this organization: self-serve fine-tuning is winding down and no new "
                   "jobs can be created; models already fine-tuned keep serving (this local server was started with "
                   "--training-closed to rehearse OpenAI's wind-down; chat completions still work)")


def fine_tunable_file(state: ServerState, owner: str, file_id: str, param: str) -> str:
    body = state.store.get("file", file_id, owner)
    if body is None:
        raise bad_request(f"invalid {param}: no file with id '{file_id}' (upload it with client.files.create).", param,
                          code="invalid_file")
    if body["purpose"] != "fine-tune":
        raise bad_request(f"invalid {param}: file '{file_id}' has purpose '{body['purpose']}', not 'fine-tune'.", param)
    return file_id


def check_job_limit(state: ServerState, owner: str) -> None:
    """429 with Retry-After when the key already has ``max_active_jobs`` unfinished jobs."""
    limits = state.limits
    if limits.max_active_jobs is None:
        return
    active = [j for _, j in Jobs(state.store).all(owner) if not j.status.finished]
    if len(active) < limits.max_active_jobs:
        return
    finishes = [j.estimated_finish for j in active if j.estimated_finish]
    wait = max(1, min(finishes) - now()) if finishes else limits.retry_after_s
    raise ApiError(429, f"You already have {len(active)} unfinished fine-tuning job(s); this server runs at most "
                        f"{limits.max_active_jobs} per key at a time so that everyone's jobs get their turn. Wait for one "
                        f"to finish (about {wait} s) or cancel one with client.fine_tuning.jobs.cancel(JOB_ID).",
                   code="too_many_active_jobs", kind="rate_limit_error", headers={"Retry-After": str(wait)})


def starting_point(state: ServerState, owner: str, model: str) -> tuple[catalogue.LocalBase, ModelRecord | None]:
    """The local base model a job on ``model`` trains, and the fine-tuned model (or checkpoint) it continues from."""
    start = None
    if model.startswith("ft:"):
        start = tuned_model(state, owner, model)
        if start is None:
            raise bad_request(f"'{model}' is not one of your fine-tuned models or checkpoints, so a job cannot start from it. "
                              "Check the name with client.models.list(), or start from a base model such as 'gpt-4.1-mini'.",
                              "model", code="model_not_available")
    base = state.bases.by_name(start.base or "") if start else state.bases.resolve(model)
    if base is None and start is not None:
        raise bad_request(f"A job cannot start from '{model}' now: {state.bases.missing(start.base or '')}", "model",
                          code="model_not_available")
    if base is None:
        raise bad_request(f"Model '{model}' is not available for fine-tuning on the local backend. Available: "
                          f"{', '.join(state.bases.names())} (bring your own with `workbook serve --model NAME=SOURCE`).",
                          "model", code="model_not_available")
    return base, start


@router.post("")
async def create_job(request: Request, state: State, owner: Owner) -> dict[str, Any]:
    asked = parsed(await json_body(request), CreateJob)
    base, start = starting_point(state, owner, asked.model)
    if asked.checked_grader is not None:  # its models must exist, on the job's base
        grader_models(state, owner, asked.checked_grader, f"method.{asked.kind}.grader", base)
    training_file = fine_tunable_file(state, owner, asked.training_file, "training_file")
    validation_file = fine_tunable_file(state, owner, asked.validation_file, "validation_file") if asked.validation_file else None
    if state.limits.training_closed:
        raise ApiError(403, TRAINING_CLOSED, code="training_not_available")
    check_job_limit(state, owner)
    job = Jobs(state.store).put(JobRecord(
        id=new_id("ftjob"), model=asked.model, created_at=now(), organization_id=ORGANIZATION,
        status=JobStatus.VALIDATING_FILES, validation_file=validation_file, training_file=training_file,
        **hyperparameter_fields(asked.kind, asked.resolved, asked.grader),
        seed=asked.seed if asked.seed is not None else secrets.randbelow(MAX_SEED),
        metadata=asked.metadata, user_provided_suffix=asked.suffix,
        base=base.name, start_from=asked.model if start else None), owner)
    state.runner.event(job.id, f"Created fine-tuning job: {job.id}")
    state.runner.submit(job.id)
    return job.wire()


def owned_job(state: ServerState, owner: str, job_id: str) -> JobRecord:
    """The caller's job, or a 404 (also for another key's job: its existence is not revealed)."""
    job = Jobs(state.store).get(job_id, owner)
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


@router.get("")
def list_jobs(request: Request, state: State, owner: Owner, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
    wanted = metadata_filter(request)
    where = (lambda j: metadata_matches(j, wanted)) if wanted else None
    items, more = state.store.page("job", owner, after=after, limit=limit_param(limit), where=where)
    return page([JobRecord.model_validate(i).wire() for i in items], more)


@router.get("/{job_id}")
def retrieve_job(state: State, owner: Owner, job_id: str) -> dict[str, Any]:
    return owned_job(state, owner, job_id).wire()


@router.post("/{job_id}/cancel")
def cancel_job(state: State, owner: Owner, job_id: str) -> dict[str, Any]:
    job = owned_job(state, owner, job_id)
    if job.status.finished:
        raise bad_request(f"Job {job_id} has already {job.status}; only a job that has not finished can be cancelled.",
                          "fine_tuning_job_id", code="job_not_cancellable")
    return state.runner.cancel(job_id).wire()


@router.post("/{job_id}/pause")
@router.post("/{job_id}/resume")
def pause_resume(state: State, owner: Owner, job_id: str) -> dict[str, Any]:
    owned_job(state, owner, job_id)
    raise bad_request("Pausing and resuming jobs is not available on the local backend; cancel the job and start "
                      "a new one from its last checkpoint model instead.", "fine_tuning_job_id", code="not_supported")


@router.get("/{job_id}/events")
def list_events(state: State, owner: Owner, job_id: str, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
    owned_job(state, owner, job_id)
    items, more = state.store.page("event", owner, parent=job_id, after=after, limit=limit_param(limit))
    return page(items, more)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(state: State, owner: Owner, job_id: str, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
    owned_job(state, owner, job_id)
    items, more = state.store.page("checkpoint", owner, parent=job_id, after=after, limit=limit_param(limit, 10))
    return page([CheckpointRecord.model_validate(i).wire() for i in items], more, first_last=True, empty_id=None)
