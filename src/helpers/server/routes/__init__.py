"""One router per resource of OpenAI's API (files, fine-tuning jobs, models, chat completions), and the server's own
``/health`` and ``/queue``."""
