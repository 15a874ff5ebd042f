"""Helpers for the Fine-Tuning & Distillation Workbook, in wings that import one way (docs/architecture.md):

* :mod:`helpers.paths`, :mod:`helpers.settings`: where files live and every ``WORKBOOK_*`` setting (the base);
* :mod:`helpers.pricing`: the model catalogue (OpenAI's models and the local ones) and the dated prices;
* :mod:`helpers.data`: JSONL, the chat format's rules, offline token counts, the validator, data preparation;
* :mod:`helpers.server`: the local OpenAI-compatible server that fine-tunes a small model on the CPU;
* :mod:`helpers.course`: what the notebooks call (set-up, the client, jobs, the billing task, the lessons);
* :mod:`helpers.cli` and :mod:`helpers.reports`: the ``workbook`` command and the executed reports.

Importing ``helpers`` does nothing else: the offline tokenizer is set up by
:func:`helpers.data.tokens.ensure_offline_encodings`, which the notebooks' set-up and the command line call.
"""
