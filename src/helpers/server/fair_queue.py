"""The fine-tuning queue, fair across API keys: the next job is the oldest waiting job of the key served least
recently (a key never served first; ties go to the key that has waited longest), so one workshop participant's five
jobs do not hold up everyone else's first."""
from __future__ import annotations

import threading
from collections import deque


class FairQueue:
    """Waiting job ids by owner; thread-safe. ``take`` blocks until a job waits."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[str]] = {}  # owner -> its waiting job ids, oldest first (owners in arrival order)
        self._served: dict[str, int] = {}  # owner -> the turn in which one of its jobs last started
        self._turn = 0
        self._wake = threading.Condition()

    def put(self, owner: str, job_id: str) -> None:
        with self._wake:
            self._queues.setdefault(owner, deque()).append(job_id)
            self._wake.notify()

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out (it was cancelled); False if it is not waiting."""
        with self._wake:
            for owner, jobs in self._queues.items():
                if job_id in jobs:
                    jobs.remove(job_id)
                    if not jobs:
                        del self._queues[owner]
                    return True
            return False

    def take(self) -> str:
        """The next job to run, waiting for one if none waits."""
        with self._wake:
            while not self._queues:
                self._wake.wait()
            self._turn += 1
            return _take_next(self._queues, self._served, self._turn)

    def order(self) -> list[str]:
        """Waiting job ids in the order they will run, if nothing else arrives."""
        with self._wake:
            queues = {owner: deque(jobs) for owner, jobs in self._queues.items()}
            served, turn = dict(self._served), self._turn
        order = []
        while queues:
            turn += 1
            order.append(_take_next(queues, served, turn))
        return order


def _take_next(queues: dict[str, deque[str]], served: dict[str, int], turn: int) -> str:
    """Pop the next job: the oldest of the key whose last turn is longest ago. Updates ``queues`` and ``served``."""
    owner = min(queues, key=lambda o: served.get(o, 0))  # min keeps the first of equals: dicts keep arrival order
    job_id = queues[owner].popleft()
    if not queues[owner]:
        del queues[owner]
    served[owner] = turn
    return job_id
