"""The model catalogue (``data/models.json``: OpenAI's models and the local ones) and the dated prices."""
