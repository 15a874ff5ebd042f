"""The data tools: JSONL, the chat format's rules, offline token counts, the streaming validator, data preparation.

They know the model catalogue and the dated prices (a validator's verdict says what the file costs to train), and
nothing of the server or the course.
"""
