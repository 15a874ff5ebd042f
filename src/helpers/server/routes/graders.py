"""``/v1/fine_tuning/alpha/graders``: check a grader (``validate``) and score one answer with it (``run``), as OpenAI's
endpoints do (``client.fine_tuning.alpha.graders``); what each grader does: :mod:`helpers.server.graders`."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from helpers.server import graders
from helpers.server.inference import Sampling
from helpers.server.protocol import RunGrader, ValidateGrader
from helpers.server.routes.models import grader_models
from helpers.server.state import Owner, State, json_body, parsed

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders")


@router.post("/validate")
async def validate(request: Request, state: State, owner: Owner) -> dict[str, Any]:
    body = await json_body(request)
    parsed(body, ValidateGrader)  # a 400 naming the field, for a grader the server cannot run
    return {"grader": body["grader"]}  # as written (a multi grader's graders by name, or one grader)


@router.post("/run")
async def run(request: Request, state: State, owner: Owner) -> dict[str, Any]:
    asked = parsed(await json_body(request), RunGrader)
    sandbox = graders.Sandbox.for_server(state.store.data_dir)
    targets = grader_models(state, owner, asked.grader)

    def judge(ask: graders.JudgeAsk) -> str:  # a model grader's model answers through the inference engine
        target = targets[ask.model]
        tokens = state.engine.prompt_tokens(target.base, ask.messages)
        if tokens + ask.max_tokens > target.base.context_length:
            raise graders.JudgeUnavailable(f"the grader's messages are {tokens:,} tokens, more than {ask.model} reads "
                                           f"({target.base.context_length:,} with its answer)")
        sampling = Sampling(max_tokens=ask.max_tokens, temperature=ask.temperature, top_p=ask.top_p, seed=ask.seed)
        try:
            return state.engine.submit(target, ask.messages, sampling).result().texts[0]
        except Exception as exc:  # the engine's failure fails this sample (and says why), not the request
            raise graders.JudgeUnavailable(f"{ask.model} could not answer: {exc}") from exc

    # a python grader runs in a process of its own for up to its wall limit, a model grader waits for the engine: not
    # on the event loop
    return await asyncio.get_running_loop().run_in_executor(None, graders.run_response, asked.grader, asked.model_sample,
                                                            asked.item, sandbox, judge)

