"""The server's own records (a fine-tuning job, a model, a job's checkpoint, a stored chat completion), typed, apart
from what the API shows of them.

A :class:`JobRecord` holds the fields OpenAI's API returns for a job (:meth:`JobRecord.wire`, checked against
``openai.types.fine_tuning.FineTuningJob`` by the fast tests) and the server's own: which local base model trains,
which fine-tuned model the job continues, the tokens billed per epoch, DPO's reference log-probabilities. In the
store both live in one JSON document, the server's own under a leading underscore (``_base``, ...), the layout
earlier versions wrote, so an existing ``.workbook/server`` folder reads unchanged and needs no migration.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from helpers.server.store import Store


class JobStatus(StrEnum):
    """A fine-tuning job's status, as OpenAI's API names it (``openai.types.fine_tuning.FineTuningJob.status``)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobRecord(BaseModel):
    """A fine-tuning job as the server keeps it. Fields are set by name (``base=...``); the store's document names
    the server's own fields by their ``_`` names. Fields an older version stored and this one no longer has are
    ignored when a record is read."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    # -- what the API returns (``FineTuningJob``) ----------------------------------------------------------------
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    status: JobStatus
    validation_file: str | None = None
    training_file: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    seed: int
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None

    # -- the server's own (stored under a leading underscore, never on the wire) ----------------------------------
    #: the local base model that trains (a name in catalogue.base_models())
    base: str | None = Field(default=None, validation_alias="_base", serialization_alias="_base")
    #: the fine-tuned model or checkpoint the job continues from
    start_from: str | None = Field(default=None, validation_alias="_start_from", serialization_alias="_start_from")
    #: tokens billed per epoch, known once the files are validated
    billing_tokens: int | None = Field(default=None, validation_alias="_billing_tokens", serialization_alias="_billing_tokens")
    #: DPO's reference log-probabilities, per pair (chosen, rejected), kept so that a resumed job compares with the same
    dpo_reference: list[tuple[float, float]] | None = Field(default=None, validation_alias="_dpo_reference",
                                                            serialization_alias="_dpo_reference")
    #: cancel was asked while the job ran; kept so that a server stopped before the worker's next step does not resume it
    cancel_requested: bool = Field(default=False, validation_alias="_cancel_requested", serialization_alias="_cancel_requested")

    @property
    def kind(self) -> str:
        """The training method: a name in ``helpers.server.methods.METHODS``."""
        return str(self.method.get("type", "supervised"))

    @property
    def grader(self) -> dict[str, Any] | None:
        """A reinforcement job's grader, as the job was created with it (None for other methods)."""
        return self.method.get(self.kind, {}).get("grader")

    @property
    def method_hyperparameters(self) -> dict[str, Any]:
        """The method's hyperparameters (numbers once the files are validated, "auto" before)."""
        return dict(self.method.get(self.kind, {}).get("hyperparameters") or {})

    def wire(self) -> dict[str, Any]:
        """The job as OpenAI's API shows it."""
        return self.model_dump(mode="json", exclude=SERVER_FIELDS)

    def stored(self) -> dict[str, Any]:
        """The job as the store keeps it (the server's own fields under their ``_`` names)."""
        return self.model_dump(mode="json", by_alias=True)


#: the server's own fields: those stored under another name
SERVER_FIELDS = {name for name, field in JobRecord.model_fields.items() if field.serialization_alias}


def hyperparameter_fields(kind: str, hyper: dict[str, Any], grader: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job's ``hyperparameters`` and ``method`` fields for a ``kind`` job with hyperparameters ``hyper`` (each a value
    or "auto"), as OpenAI's job shows them: the top-level three, and the method's own (with DPO's ``beta``), and a
    reinforcement job's grader as it was given."""
    return {"hyperparameters": {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            "method": {"type": kind, kind: {**({"grader": grader} if grader is not None else {}), "hyperparameters": dict(hyper)}}}


def stored_names(**changes: Any) -> dict[str, Any]:
    """Changes to a job by field name, under the names the store's document uses (a KeyError for a name that is
    not a field). Values are JSON as they are: numbers, strings (a JobStatus is one), lists and dicts."""
    fields = JobRecord.model_fields
    return {fields[name].serialization_alias or name: value for name, value in changes.items()}


class Jobs:
    """Typed access to the job records in a :class:`~helpers.server.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, job: JobRecord, owner: str) -> JobRecord:
        self.store.put("job", job.stored(), owner)
        return job

    def get(self, job_id: str, owner: str | None) -> JobRecord | None:
        """A job by id (``owner`` None: any key's), or None when there is none or it is another key's."""
        body = self.store.get("job", job_id, owner)
        return None if body is None else JobRecord.model_validate(body)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change fields of a job (by field name) in one step of the store; returns the job as it now is."""
        return JobRecord.model_validate(self.store.update("job", job_id, **stored_names(**changes)))

    def all(self, owner: str | None = None) -> list[tuple[str, JobRecord]]:
        """Every job (of ``owner``, or of every key), oldest first, with its owner."""
        return [(who, JobRecord.model_validate(body)) for who, body in self.store.all("job", owner=owner)]


class ModelRecord(BaseModel):
    """A model as the server keeps it: what ``/v1/models`` shows (``openai.types.Model``) and, for a fine-tuned model
    or checkpoint, the base model it was trained on (stored as ``_base``, ``_base_location``, ``_job``: the layout
    earlier versions wrote)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    #: the base model a fine-tuned model answers with (a name the server's bases know); None for a base model
    base: str | None = Field(default=None, validation_alias="_base", serialization_alias="_base")
    #: where a brought base was read from when the model was trained ("" for the shipped one)
    base_location: str = Field(default="", validation_alias="_base_location", serialization_alias="_base_location")
    #: the job that trained it
    job: str | None = Field(default=None, validation_alias="_job", serialization_alias="_job")

    def wire(self) -> dict[str, Any]:
        """The model as OpenAI's API shows it."""
        return self.model_dump(mode="json", include={"id", "object", "created", "owned_by"})

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Models:
    """Typed access to the fine-tuned models in a :class:`~helpers.server.store.Store` (checkpoints are kept with
    their jobs)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, model: ModelRecord, owner: str) -> ModelRecord:
        self.store.put("model", model.stored(), owner)
        return model

    def get(self, name: str, owner: str | None) -> ModelRecord | None:
        body = self.store.get("model", name, owner)
        return None if body is None else ModelRecord.model_validate(body)

    def all(self, owner: str | None = None) -> list[ModelRecord]:
        return [ModelRecord.model_validate(body) for _, body in self.store.all("model", owner=owner)]


class CheckpointRecord(BaseModel):
    """A job's checkpoint as the server keeps it: what ``client.fine_tuning.jobs.checkpoints.list`` shows
    (``openai.types.fine_tuning.jobs.FineTuningJobCheckpoint``) and the epoch it was saved after (stored as ``_epoch``),
    where a resumed job starts again."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]  # openai's Metrics: step, train_loss, valid_loss, ...
    #: the epochs done when it was saved
    epoch: int = Field(validation_alias="_epoch", serialization_alias="_epoch")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"epoch"})

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Checkpoints:
    """Typed access to the checkpoints in a :class:`~helpers.server.store.Store`, each kept under its job."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, checkpoint: CheckpointRecord, owner: str) -> CheckpointRecord:
        self.store.put("checkpoint", checkpoint.stored(), owner, parent=checkpoint.fine_tuning_job_id)
        return checkpoint

    def of_job(self, job_id: str) -> list[CheckpointRecord]:
        """A job's checkpoints, oldest first."""
        return [CheckpointRecord.model_validate(body) for _, body in self.store.all("checkpoint", parent=job_id)]

    def all(self, owner: str) -> list[CheckpointRecord]:
        return [CheckpointRecord.model_validate(body) for _, body in self.store.all("checkpoint", owner=owner)]

    def delete(self, checkpoint: CheckpointRecord) -> None:
        self.store.delete("checkpoint", checkpoint.id)


class StoredCompletion(BaseModel):
    """A chat completion made with ``store=True``: the answer as the API returned it (``openai.types.chat.ChatCompletion``,
    kept as its JSON) and the messages asked (stored as ``_request``), which ``/chat/completions/{id}/messages`` lists."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")  # the answer's own fields, as returned

    id: str
    request: list[dict[str, Any]] = Field(validation_alias="_request", serialization_alias="_request")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"request"})

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
