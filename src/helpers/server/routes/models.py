"""``/v1/models``: the base models (the shipped one under each OpenAI name it stands in for, and the models the server
was started with: :mod:`helpers.server.bases`) and the caller's fine-tuned models and checkpoints; which weights answer
for a model name."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from helpers.pricing import catalogue
from helpers.server import graders
from helpers.server.errors import ApiError, bad_request
from helpers.server.graders import Grader
from helpers.server.inference import Target
from helpers.server.jobs import ORGANIZATION
from helpers.server.records import Checkpoints, Jobs, ModelRecord, Models
from helpers.server.state import Owner, ServerState, State
from helpers.server.store import now

router = APIRouter(prefix="/v1/models")
SERVER_STARTED = now()


def base_model_card(name: str) -> ModelRecord:
    return ModelRecord(id=name, created=SERVER_STARTED, owned_by="system")


def checkpoint_model(state: ServerState, owner: str, name: str) -> ModelRecord | None:
    """A checkpoint of one of the caller's jobs, as a model (its ``base`` names the job's base model)."""
    for ckpt in Checkpoints(state.store).all(owner):
        if ckpt.fine_tuned_model_checkpoint == name:
            job = Jobs(state.store).get(ckpt.fine_tuning_job_id, owner)
            base = (job.base or getattr(state.bases.resolve(job.model), "name", None)) if job else None
            if base is not None and job is not None:
                return ModelRecord(id=name, created=ckpt.created_at, owned_by=ORGANIZATION, base=base, job=job.id)
    return None


def tuned_model(state: ServerState, owner: str, name: str) -> ModelRecord | None:
    """One of the caller's fine-tuned models or checkpoints, by name."""
    return Models(state.store).get(name, owner) or checkpoint_model(state, owner, name)


def find_model(state: ServerState, owner: str, name: str) -> tuple[ModelRecord, Target]:
    """The model and the weights that answer for ``name``, or a 404."""
    base = state.bases.resolve(name)
    if base is not None and not name.startswith("ft:"):
        return base_model_card(name), Target(base)
    card = tuned_model(state, owner, name)
    if card is None or card.base is None:
        raise ApiError(404, f"The model '{name}' does not exist or you do not have access to it.", param="model",
                       code="model_not_found")
    base = state.bases.by_name(card.base)
    if base is None:
        raise ApiError(404, f"The model '{name}' cannot answer now: {state.bases.missing(card.base)}", param="model",
                       code="model_not_available")
    return card, Target(base, state.store.model_dir(owner, name))


def grader_models(state: ServerState, owner: str, grader: Grader, param: str = "grader",
                  base: catalogue.LocalBase | None = None) -> dict[str, Target]:
    """What serves each model a grader asks (``graders.models_asked``), or a 400 naming the field: a model the caller
    does not have, one that cannot answer now, or (``base`` given: a job's grader, which asks its model on the job's
    own copy of the base) one on another base."""
    targets = {}
    for name, where in graders.models_asked(grader, param).items():
        try:
            _, target = find_model(state, owner, name)
        except ApiError as exc:
            raise bad_request(f"The grader's model: {exc.message}", where, code="invalid_grader") from None
        unavailable = state.engine.unavailable(target.base) if base is None else None  # a job's asks its own copy
        if unavailable is not None:
            raise bad_request(f"The grader's model '{name}' cannot answer on this server: {unavailable}", where, code="invalid_grader")
        if base is not None and target.base.name != base.name:
            raise bad_request(f"The grader's model '{name}' is made from {target.base.name}, and this job trains "
                              f"{base.name}: here a job's grader model answers on the job's own copy of its base, so it "
                              f"must be that base or a model fine-tuned from it.", where, code="invalid_grader")
        targets[name] = target
    return targets


@router.get("")
def list_models(state: State, owner: Owner) -> dict[str, Any]:
    cards = [base_model_card(name) for name in state.bases.names()] + Models(state.store).all(owner)
    return {"object": "list", "data": [card.wire() for card in cards]}


@router.get("/{model:path}")
def retrieve_model(state: State, owner: Owner, model: str) -> dict[str, Any]:
    return find_model(state, owner, model)[0].wire()


@router.delete("/{model:path}")
def delete_model(state: State, owner: Owner, model: str) -> dict[str, Any]:
    card, target = find_model(state, owner, model)
    if card.owned_by == "system":
        raise ApiError(403, f"'{model}' is a base model; only your fine-tuned models can be deleted.", param="model",
                       kind="permission_error", code="model_not_deletable")
    if Models(state.store).get(model, owner) is None:
        raise bad_request(f"'{model}' is a checkpoint; delete the fine-tuned model of its job instead.", "model")
    state.store.delete("model", model)
    if target.weights is not None:
        state.engine.forget(target.weights)
    return {"id": model, "object": "model", "deleted": True}
