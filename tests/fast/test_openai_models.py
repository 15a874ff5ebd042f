"""The ``openai`` types that the course's threads parse are built first (``helpers.openai_models``): pydantic's deferred
build is not thread-safe, and notebook 09's first 16 concurrent answers once failed on it in CI."""
from __future__ import annotations

import subprocess
import sys
import textwrap

# Each run is a fresh process (the race is on a class's first build): 16 threads parse one answer at once, the way
# the client does (``construct_type``), through ``send_all``, with Python switching threads every microsecond so that
# builds interleave. Without ``ready`` this failed in 8 runs of 10 here; building ``ChatCompletion`` alone, in 7.
RACE = textwrap.dedent("""
    import sys
    sys.setswitchinterval(1e-6)
    from openai._models import construct_type
    from openai.types.chat import ChatCompletion
    from openai.types.fine_tuning.alpha import GraderRunResponse
    from helpers.course.sending import send_all

    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    top = {"token": "a", "logprob": -1.0, "bytes": [97]}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
              "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": [{**top, "top_logprobs": [top]}]},
                           "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    graded = {"reward": 1.0, "metadata": {"name": "g", "type": "string_check", "errors": {}, "execution_time": 0.0, "scores": {},
              "token_usage": None, "sampled_model_name": None}, "sub_rewards": {}, "model_grader_token_usage_per_model": {}}

    def parse(_: int) -> str:
        try:
            construct_type(type_=ChatCompletion, value=answer).choices[0].message.tool_calls[0].function.name
            construct_type(type_=GraderRunResponse, value=graded).metadata.errors
            return "ok"
        except Exception as exc:  # the race's AttributeError or PydanticUserError
            return repr(exc)

    print(sorted(set(send_all(parse, range(16), 16, answers=(ChatCompletion, GraderRunResponse)))))
""")


def test_threads_parsing_the_first_answers_of_a_process_at_once_all_succeed():
    for run in range(5):
        result = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "['ok']", f"run {run}: {result.stdout.strip()}"
