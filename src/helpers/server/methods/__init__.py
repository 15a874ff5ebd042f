"""Training methods, one module each (as TRL has a trainer per method): what a job of its ``method.type`` takes as
hyperparameters and their "auto" rules, which examples its files hold and how each is encoded, what it prepares
before the first step, and its step. The job runner and the training loop ask the method; neither branches on its
name. A new method is a module here and an entry in ``METHODS``."""
from __future__ import annotations

from helpers.server.methods.base import JobFailure, Method, Preparation, Stepped
from helpers.server.methods.dpo import Dpo
from helpers.server.methods.reinforcement import Reinforcement
from helpers.server.methods.supervised import Supervised

METHODS: dict[str, Method] = {method.name: method for method in (Supervised(), Dpo(), Reinforcement())}

__all__ = ["METHODS", "JobFailure", "Method", "Preparation", "Stepped"]
