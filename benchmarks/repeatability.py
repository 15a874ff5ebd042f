"""Where run-to-run differences come from: the same job twice, and the same model answering alone and in batches.

    .venv/bin/python benchmarks/repeatability.py [--port 8437]

On a fresh local server (scratch folder), the same fine-tuning job (the first ``N_TRAIN`` course examples, ``EPOCHS``
epochs, the same seed) runs twice, one after the other. It prints whether the two jobs' losses agree step by step,
and how many of ``N_TEST`` held-out answers differ between the two models. Then one model answers the same requests
three ways: in concurrent batches (as the notebooks ask), again in batches, and one request at a time. Greedy decoding
picks the likeliest token; where two tokens are nearly tied, a different order of the same sums (another batch shape,
another padding) can flip the pick, and the answer goes its own way from there. About 8 minutes on 2 cores (fp32).
Results: ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, EPOCHS, SEED, N_TEST = 96, 2, 1, 48


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8437)
    args = parser.parse_args(argv)

    from openai import OpenAI

    from helpers.course import backend, evaluation, finetune
    from helpers.data.dataprep import read_jsonl, write_jsonl
    from helpers.server.localmodels import compute_dtype

    with tempfile.TemporaryDirectory() as scratch:
        server = backend.local_server(port=args.port, data_dir=Path(scratch) / "server")
        client = OpenAI(base_url=server.api_url, api_key=backend.local_key())
        try:
            train = write_jsonl(read_jsonl(ROOT / "data/billing/train.jsonl", N_TRAIN), Path(scratch) / "train.jsonl")
            test = read_jsonl(ROOT / "data/billing/test.jsonl", N_TEST)
            file_id = finetune.upload(client, train).id
            jobs, losses = [], []
            for run in (1, 2):
                job = finetune.start_job(client, training_file=file_id, model="gpt-4.1-mini", seed=SEED,
                                         suffix=f"repeat{run}", hyperparameters={"n_epochs": EPOCHS})
                job = finetune.follow(client, job.id, show_events=False)
                jobs.append(job)
                losses.append(finetune.results_frame(client, job)["train_loss"].tolist())
            same_steps = sum(a == b for a, b in zip(*losses, strict=True))
            largest = max(abs(a - b) for a, b in zip(*losses, strict=True))
            print(f"precision {compute_dtype()}; two jobs, same file and seed ({N_TRAIN} examples, {EPOCHS} epochs): "
                  f"{same_steps} of {len(losses[0])} step losses identical (largest difference {largest:.2e}); "
                  f"final {losses[0][-1]:.6f} and {losses[1][-1]:.6f}")

            def answers(model: str, concurrency: int) -> list[str]:
                return evaluation.evaluate(client, model, test, concurrency=concurrency)["answer"].tolist()

            first, second = (answers(job.fine_tuned_model, 16) for job in jobs)
            print(f"the two jobs' models, batched: {sum(a != b for a, b in zip(first, second))} of {N_TEST} answers differ")
            again, alone = answers(jobs[0].fine_tuned_model, 16), answers(jobs[0].fine_tuned_model, 1)
            print(f"one model, batched twice: {sum(a != b for a, b in zip(first, again))} of {N_TEST} differ; batched against "
                  f"one at a time: {sum(a != b for a, b in zip(first, alone))} of {N_TEST} differ")
            for a, b, example in zip(first, alone, test):
                if a != b:
                    print(f"  {example['messages'][-2]['content']!r}: batched {a!r}, alone {b!r}")
        finally:
            backend.stop_local_server(args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
