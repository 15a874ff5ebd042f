"""Fine-tuning jobs: the lifecycle OpenAI's API shows, run one at a time by a worker thread.

``validating_files`` (the validator checks the uploaded files) -> ``queued`` -> ``running`` ->
``succeeded`` | ``failed`` | ``cancelled``. The queue is fair across API keys (``fair_queue``); what a job's
method does is its module's (``methods``). Events use OpenAI's wording; one checkpoint per epoch, the last
three kept, each usable as a model; a results file (purpose ``fine-tune-results``) holds the step metrics
as base64 CSV, as OpenAI returns it. A job that was running when the server stopped is resumed from its
last checkpoint (or from the start) when the server starts again.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import shutil
import threading
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from helpers.data.dataprep import read_jsonl
from helpers.data.validate import MIN_EXAMPLES, ValidationReport, validate_file
from helpers.pricing import catalogue
from helpers.server import chat_template, graders, localmodels
from helpers.server.bases import Bases
from helpers.server.fair_queue import FairQueue
from helpers.server.hyperparameters import resolve_auto
from helpers.server.methods import METHODS, JobFailure, Preparation
from helpers.server.records import (
    CheckpointRecord,
    Checkpoints,
    JobRecord,
    Jobs,
    JobStatus,
    ModelRecord,
    Models,
    hyperparameter_fields,
)
from helpers.server.shared import ADAPTER_CONFIG, SharedModels, in_own_thread
from helpers.server.store import Store, new_id, now

log = logging.getLogger("workbook.jobs")


KEEP_CHECKPOINTS = 3
ORGANIZATION = "org-local"
OWNER_LABEL = "local"


class JobRunner:
    """Runs queued jobs in a background thread: keys take turns, each key's jobs oldest first."""

    def __init__(self, store: Store, models: SharedModels, bases: Bases | None = None) -> None:
        self.store = store
        self.jobs = Jobs(store)
        self.models = models
        self.bases = bases or Bases()
        self.queue = FairQueue()
        self._cancel: set[str] = set()
        self._current: str | None = None
        self._thread = threading.Thread(target=self._loop, name="fine-tuning", daemon=True)

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self.queue.put(self._owner(job_id), job_id)

    def waiting(self) -> list[str]:
        """Waiting job ids in the order they will run, if nothing else arrives."""
        return self.queue.order()

    @property
    def current(self) -> str | None:
        return self._current

    def _job(self, job_id: str) -> JobRecord:
        """A job the runner knows exists (it was stored before it was submitted)."""
        job = self.jobs.get(job_id, None)
        if job is None:
            raise KeyError(f"no fine-tuning job {job_id} in the store")
        return job

    def _owner(self, job_id: str) -> str:
        owner = self.store.owner("job", job_id)
        if owner is None:
            raise KeyError(f"no fine-tuning job {job_id} in the store")
        return owner

    def cancel(self, job_id: str) -> JobRecord:
        job = self._job(job_id)
        if job.status.finished:
            return job
        if job_id != self._current and self.queue.remove(job_id):
            return self._finish(job_id, JobStatus.CANCELLED, message="Fine-tuning job cancelled")
        # running, or just taken from the queue: the run checks this set before its first step and between steps
        self._cancel.add(job_id)
        # the worker stops between steps; report the request now, as OpenAI does, and keep it: a server stopped before
        # that step finishes the job as cancelled when it starts again (seen: cancel, then `workbook stop` at once,
        # and the restarted server resumed the job)
        return self.jobs.update(job_id, cancel_requested=True)

    def event(self, job_id: str, message: str, *, level: str = "info", kind: str = "message", data: dict | None = None) -> None:
        owner = self._owner(job_id)
        body = {"object": "fine_tuning.job.event", "id": new_id("ftevent"), "created_at": now(), "level": level,
                "message": message, "data": data or {}, "type": kind}
        self.store.put("event", body, owner, parent=job_id)

    # -- worker ---------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Jobs left unfinished by a stopped server go back in the queue, oldest first."""
        for _, job in self.jobs.all():
            if not job.status.finished and job.cancel_requested:
                self._finish(job.id, JobStatus.CANCELLED, message="Fine-tuning job cancelled")
            elif not job.status.finished:
                if job.status == JobStatus.RUNNING:
                    self.event(job.id, "The server restarted while this job was running; it will resume from its last checkpoint.", level="warn")
                self.jobs.update(job.id, status=JobStatus.QUEUED if job.status == JobStatus.RUNNING else job.status, estimated_finish=None)
                self.queue.put(self._owner(job.id), job.id)

    def _loop(self) -> None:
        while True:
            job_id = self._current = self.queue.take()
            try:
                in_own_thread(partial(self._run, job_id), f"fine-tuning {job_id}")
            except Exception as exc:  # a bug or resource problem: the job fails, the server lives on
                log.error("job %s crashed: %s", job_id, traceback.format_exc())
                try:
                    self._finish(job_id, JobStatus.FAILED, error={"code": "server_error", "param": None,
                                                          "message": f"The local trainer failed: {type(exc).__name__}: {exc}"})
                except Exception:  # a record that cannot be written: the queue still goes on to the next job
                    log.error("job %s could not be marked failed: %s", job_id, traceback.format_exc())
            finally:
                self._current = None
                self._cancel.discard(job_id)
                localmodels.release_memory()  # what training passes of many shapes freed goes back to the system

    def _finish(self, job_id: str, status: JobStatus, *, error: dict | None = None, message: str | None = None, **fields: Any) -> JobRecord:
        """End a job: its last event first, then its status, so that events listed when the status reads final tell
        the whole story."""
        if message:
            self.event(job_id, message, level="error" if status == JobStatus.FAILED else "info")
        elif error:
            self.event(job_id, f"Fine-tuning job failed: {error['message']}", level="error")
        return self.jobs.update(job_id, status=status, finished_at=now(), estimated_finish=None, error=error, **fields)

    def _validate(self, job: JobRecord) -> tuple[Any, Any] | None:
        owner = self._owner(job.id)
        reports: list[ValidationReport | None] = []
        for param in ("training_file", "validation_file"):
            file_id = getattr(job, param)
            if not file_id:
                reports.append(None)
                continue
            self.event(job.id, f"Validating {param.replace('_file', '')} file: {file_id}")
            report = validate_file(self.store.file_path(owner, file_id), model=_catalogue_model(job.model),
                                   min_examples=MIN_EXAMPLES if param == "training_file" else 1)
            if not report.ok:
                first = report.errors[0]
                where = f"line {first.line}" if first.line is not None else "the file"
                more = f" ({report.stats['error_count'] - 1} more problems; run `workbook validate` on the file to see them all)" if report.stats["error_count"] > 1 else ""
                self._finish(job.id, JobStatus.FAILED, error={
                    "code": f"invalid_{param}", "param": param,
                    "message": f"The {param.replace('_', ' ')} {file_id} has an error at {where}: [{first.code}] {first.message}{more}"})
                return None
            reports.append(report)
        train_report, valid_report = reports
        expected = METHODS[job.kind].examples
        for param, checked in (("training_file", train_report), ("validation_file", valid_report)):
            if checked is not None and checked.format != expected:
                self._finish(job.id, JobStatus.FAILED, error={"code": f"invalid_{param}", "param": param,
                             "message": f"A {job.kind} job needs {expected} examples, but {getattr(job, param)} holds {checked.format} examples."})
                return None
        return train_report, valid_report

    def _run(self, job_id: str) -> None:
        job = self.jobs.get(job_id, None)
        if job is None or job.status.finished:
            return
        owner = self._owner(job_id)
        base = self.bases.by_name(job.base) if job.base else self.bases.resolve(job.model)
        if base is None:  # a brought base the server was restarted without (or a job stored by another version)
            self._finish(job_id, JobStatus.FAILED, error={"code": "model_not_available", "param": "model", "message":
                         f"This job cannot run: {self.bases.missing(job.base) if job.base else f'no local model serves {job.model}.'}"})
            return
        if job.status == JobStatus.VALIDATING_FILES:
            reports = self._validate(job)
            if reports is None:
                return
            train_report, _ = reports
            hyper = resolve_auto(job.kind, {**job.hyperparameters, **job.method_hyperparameters}, train_report.stats["valid_examples"],
                                 localmodels.hidden_size(base))
            job = self.jobs.update(job_id, status=JobStatus.QUEUED, **hyperparameter_fields(job.kind, hyper, job.grader),
                                   billing_tokens=train_report.stats["billing_tokens_per_epoch"])
            self.event(job_id, "Files validated, moving job to queued state")
        if job_id in self._cancel:
            self._finish(job_id, JobStatus.CANCELLED, message="Fine-tuning job cancelled")
            return
        job = self.jobs.update(job_id, status=JobStatus.RUNNING, estimated_finish=None)
        self.event(job_id, "Fine-tuning job started")
        if job.start_from:
            self.event(job_id, f"Starting from the fine-tuned model {job.start_from}: its adapter is the starting weights.")
        elif base.name != job.model:
            self.event(job_id, f"Local backend: {job.model} is served by the local model {base.name} ({base.source}).")
        from helpers.server.training import Cancelled

        try:
            self._train(job, owner, base)
        except Cancelled:
            self._finish(job_id, JobStatus.CANCELLED, message="Fine-tuning job cancelled")
        except JobFailure as failure:
            self._finish(job_id, JobStatus.FAILED, error=failure.error)

    def _train(self, job: JobRecord, owner: str, base: catalogue.LocalBase) -> None:
        from helpers.server import training

        job_id, method = job.id, METHODS[job.kind]
        hyper = job.method_hyperparameters  # numbers since the files were validated
        settings = training.TrainSettings(method=job.kind, n_epochs=int(hyper["n_epochs"]), batch_size=int(hyper["batch_size"]),
                                          learning_rate_multiplier=float(hyper["learning_rate_multiplier"]),
                                          beta=float(hyper.get("beta") or 0.1), seed=job.seed)
        chat = localmodels.load_chat(base)
        settings = dataclasses.replace(settings, **method.job_settings(job, chat, graders.Sandbox.for_server(self.store.data_dir)))
        train_examples = self._examples(job, owner, chat, base, job.training_file)
        valid_examples = self._examples(job, owner, chat, base, job.validation_file)
        start = self._starting_point(job, owner)
        if start is None:
            return
        start_epoch, resume_from, resume_step = start
        history = self._metrics_history(job_id, keep_through=resume_step)
        shared = self.models.get(base)
        adapter = f"train_{job_id.replace('-', '_')}"
        with shared.hold():
            model = shared.add_training_adapter(adapter, settings, resume_from)
        try:
            method.prepare(Preparation(self._job(job_id), train_examples, shared, adapter, cancelled=lambda: job_id in self._cancel,
                                       event=partial(self.event, job_id), keep=partial(self.jobs.update, job_id), settings=settings,
                                       start_weights=self.store.model_dir(owner, job.start_from) if job.start_from else None,
                                       model_weights=lambda name: self.store.model_dir(owner, name) if name.startswith("ft:") else None))
        except BaseException:
            with shared.hold():
                shared.remove_training_adapter(adapter)
            raise
        started = time.monotonic()

        def on_step(m: training.StepMetrics) -> None:
            history.append(m)
            text = f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}"
            if m.valid_loss is not None:
                text += f", validation loss={m.valid_loss:.4f}"
            if m.train_reward_mean is not None:  # a reinforcement job's
                text += f", mean reward={m.train_reward_mean:.3f}"
            if m.valid_reward_mean is not None:
                text += f", validation mean reward={m.valid_reward_mean:.3f}"
            elapsed = time.monotonic() - started
            done = m.step - resume_step
            finish = now() + int(elapsed / done * (m.total_steps - m.step)) if done else None
            self.jobs.update(job_id, estimated_finish=finish)
            self.event(job_id, text, kind="metrics", data=m.as_dict())

        try:
            training.train(model, chat.tokenizer, train_examples, valid_examples, settings, on_step=on_step,
                           on_epoch_end=partial(self._checkpoint, job, owner, shared, adapter), should_stop=lambda: job_id in self._cancel, start_epoch=start_epoch,
                           hold=lambda: shared.training_turn(adapter))
            name = _model_name(job)
            with shared.hold():
                shared.save_adapter(adapter, self.store.model_dir(owner, name))
        finally:
            with shared.hold():
                shared.remove_training_adapter(adapter)
        Models(self.store).put(ModelRecord(id=name, created=now(), owned_by=ORGANIZATION, base=base.name,
                                           base_location=base.location, job=job_id), owner)
        self.event(job_id, f"New fine-tuned model created: {name}")
        results = self._results_file(owner, job_id, history)
        job = self._job(job_id)
        trained = (job.billing_tokens or 0) * settings.n_epochs
        self._finish(job_id, JobStatus.SUCCEEDED, message="The job has successfully completed", fine_tuned_model=name, trained_tokens=trained,
                     result_files=[results])

    def _checkpoint(self, job: JobRecord, owner: str, shared, adapter: str, epoch: int, step: int, m) -> None:
        """At an epoch's end: the adapter saved as a checkpoint model (train() holds the model here); the last
        ``KEEP_CHECKPOINTS`` kept."""
        job_id = job.id
        name = f"{_model_name(job)}:ckpt-step-{step}"
        shared.save_adapter(adapter, self.store.model_dir(owner, name))
        metrics = {k: v for k, v in m.as_dict().items() if k != "total_steps"}
        checkpoints = Checkpoints(self.store)
        checkpoints.put(CheckpointRecord(id=new_id("ftckpt"), created_at=now(), fine_tuned_model_checkpoint=name, step_number=step,
                                         metrics=metrics, fine_tuning_job_id=job_id, epoch=epoch), owner)
        self.event(job_id, f"Checkpoint created at step {step}")
        for old in checkpoints.of_job(job_id)[:-KEEP_CHECKPOINTS]:
            checkpoints.delete(old)
            shutil.rmtree(self.store.model_dir(owner, old.fine_tuned_model_checkpoint), ignore_errors=True)

    def _examples(self, job: JobRecord, owner: str, chat: chat_template.ChatTemplate, base: catalogue.LocalBase,
                  file_id: str | None) -> list:
        """A job's file, encoded by its method; examples longer than the model's training window are skipped (with a
        warning event)."""
        from helpers.server import training

        if not file_id:
            return []
        kept, skipped = METHODS[job.kind].encode_file(chat, read_jsonl(self.store.file_path(owner, file_id)), training.MAX_SEQ_LEN)
        if skipped:
            self.event(job.id, f"{skipped} examples are longer than {training.MAX_SEQ_LEN} tokens for {base.name} "
                                  "and were skipped.", level="warn")
        return kept

    def _starting_point(self, job: JobRecord, owner: str) -> tuple[int, Path | None, int] | None:
        """Where training starts: ``(epoch, adapter folder, step)``: the last checkpoint of a resumed job, the model a job
        continues from, or nothing (a new adapter). None when the model it continues from is gone (the job fails)."""
        job_id = job.id
        checkpoints = Checkpoints(self.store).of_job(job_id)
        if checkpoints:
            last = checkpoints[-1]
            self.event(job_id, f"Resuming from checkpoint at step {last.step_number} (epoch {last.epoch}).")
            return last.epoch, self.store.model_dir(owner, last.fine_tuned_model_checkpoint), last.step_number
        if job.start_from:
            folder = self.store.model_dir(owner, job.start_from)
            if not (folder / ADAPTER_CONFIG).exists():
                self._finish(job_id, JobStatus.FAILED, error={"code": "model_not_available", "param": "model", "message":
                             f"The model {job.start_from} this job starts from was deleted before the job ran."})
                return None
            return 0, folder, 0
        return 0, None, 0

    def _metrics_history(self, job_id: str, keep_through: int) -> list:
        """Step metrics already recorded up to ``keep_through``; later ones (from a run that stopped before
        its next checkpoint, and is being redone) are deleted so that no step is reported twice."""
        from helpers.server.training import StepMetrics

        history = []
        for _, event in self.store.all("event", parent=job_id):
            if event.get("type") != "metrics":
                continue
            if event["data"]["step"] > keep_through:
                self.store.delete("event", event["id"])
            else:
                history.append(StepMetrics(**event["data"]))
        return history

    def _results_file(self, owner: str, job_id: str, history: list) -> str:
        # OpenAI's five columns, then what a method reports beside them (a reinforcement job's rewards, KL, lengths)
        extra = [name for name in ("train_reward_mean", "valid_reward_mean", "train_kl", "train_answer_tokens_mean", "train_grader_failures")
                 if any(getattr(m, name) is not None for m in history)]
        lines = [",".join(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy", *extra])]
        fmt = lambda v: "" if v is None else f"{v:.5f}"  # noqa: E731
        for m in history:
            lines.append(",".join([str(m.step), *(fmt(v) for v in (m.train_loss, m.train_mean_token_accuracy, m.valid_loss,
                                                                      m.valid_mean_token_accuracy, *(getattr(m, n) for n in extra)))]))
        data = base64.b64encode(("\n".join(lines) + "\n").encode())
        file_id = new_id("file")
        self.store.write_file(owner, file_id, data)
        self.store.put("file", {"object": "file", "id": file_id, "purpose": "fine-tune-results", "filename": "step_metrics.csv",
                                "bytes": len(data), "created_at": now(), "status": "processed"}, owner)
        return file_id


def _catalogue_model(model: str) -> str:
    """The model name the validator counts tokens for (an OpenAI name; local names count as the default)."""
    from helpers.pricing.catalogue import default_model, model_info

    try:
        return model_info(model).name
    except ValueError:
        return default_model()


def _model_name(job: JobRecord) -> str:
    """As OpenAI names it: ``ft:{base}:{org}:{suffix}:{id}``, the base being the first base model of a chain of jobs."""
    suffix = job.user_provided_suffix or ""
    root = job.model.split(":")[1] if job.model.startswith("ft:") else job.model
    return f"ft:{root}:{OWNER_LABEL}:{suffix}:{job.id[-8:]}"
