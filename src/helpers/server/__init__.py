"""The local backend: an OpenAI-compatible fine-tuning server that really trains a small model on the CPU."""
