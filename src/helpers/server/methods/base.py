"""What every training method declares (:class:`Method`), and what it is given to prepare a job (:class:`Preparation`)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from helpers.server.chat_template import ChatTemplate
    from helpers.server.records import JobRecord
    from helpers.server.training import TrainSettings


@dataclass
class Preparation:
    """What a method may use before a job's first step: the job, its encoded training examples, the shared base model
    and the job's adapter on it, and the runner's ways to check for a cancel, tell the job's events, and keep fields
    on the job's record (so that a resumed job finds what was prepared)."""

    job: JobRecord
    examples: list
    shared: Any  # helpers.server.shared.SharedBase
    adapter: str
    cancelled: Callable[[], bool]
    event: Callable[[str], None]
    keep: Callable[..., Any]
    settings: TrainSettings | None = None
    #: the adapter folder of the fine-tuned model the job starts from (``job.start_from``); None for a job from the base
    start_weights: Path | None = None
    #: a model name of the job's owner as the adapter folder that makes it (None: the base itself)
    model_weights: Callable[[str], Path | None] | None = None


class JobFailure(Exception):
    """What fails a job with an error of OpenAI's shape (``code``, ``param``, ``message``) rather than a server error."""

    def __init__(self, code: str, param: str | None, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code, "param": param, "message": message}


@dataclass
class Stepped:
    """One step of a method: the batch's loss (detached), its accuracy (tokens for a supervised job, pairs ranked right
    for DPO, the mean reward for reinforcement), and what else the method reports for the step (``StepMetrics``' names)."""

    loss: torch.Tensor
    accuracy: float
    reported: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """One training method: its name on the wire (``method.type``), its hyperparameters, its examples, its step."""

    name: ClassVar[str]
    #: the format of the examples its files must hold, as the validator reports a file's format ("chat", "preference")
    examples: ClassVar[str]
    #: ``learning_rate_multiplier="auto"`` for a model of ``hyperparameters.REFERENCE_WIDTH``, measured for the method
    auto_lr_multiplier: ClassVar[float]
    #: the method's own hyperparameters beyond n_epochs, batch_size and learning_rate_multiplier, each with its "auto"
    own_hyperparameters: ClassVar[dict[str, float]] = {}
    #: hyperparameters OpenAI names that take one value here: name -> (that value, why)
    fixed_hyperparameters: ClassVar[dict[str, tuple[Any, str]]] = {}
    #: whether a job of this method is created with a grader (``method.<name>.grader``), which scores its answers
    graded: ClassVar[bool] = False
    #: whether the job reports a validation loss on its validation file as it trains
    validation_loss: ClassVar[bool] = True
    #: whether NEFTune's noise is added to the input embeddings in its training passes
    neftune: ClassVar[bool] = False

    def encode_file(self, chat: ChatTemplate, rows: list[dict[str, Any]], max_len: int) -> tuple[list, int]:
        """A file's examples encoded for training with the model's own template, and how many were left out as longer
        than ``max_len`` tokens."""
        encoded = [self.encode(chat, row) for row in rows]
        kept = [example for example in encoded if self.length(example) <= max_len]
        return kept, len(encoded) - len(kept)

    @abstractmethod
    def encode(self, chat: ChatTemplate, row: dict[str, Any]) -> Any:
        """One example of the file, encoded."""

    @abstractmethod
    def length(self, example: Any) -> int:
        """An encoded example's tokens in its longest forward pass (batches are grouped by it)."""

    def job_settings(self, job: JobRecord, chat: ChatTemplate, sandbox: Any) -> dict[str, Any]:
        """``TrainSettings`` fields of the method's own for ``job`` (a reinforcement job's grading); most have none.
        ``sandbox``: where the server runs python graders (``graders.Sandbox``)."""
        return {}

    def evaluate(self, model: Any, examples: list, settings: TrainSettings, step: int, pad_id: int) -> dict[str, Any]:
        """What the method measures on the validation examples after ``step`` beyond the loop's validation loss
        (``StepMetrics``' names); most measure nothing more."""
        return {}

    def prepare(self, preparation: Preparation) -> None:  # noqa: B027  # most methods prepare nothing
        """What the method needs before the first step (the training adapter is on the model, as the job starts)."""

    @abstractmethod
    def step(self, model: Any, batch: list, settings: TrainSettings, pad_id: int, device: str) -> Stepped:
        """The gradients of one batch, accumulated on the model's trainable weights, and what the step measured."""
