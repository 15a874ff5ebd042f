"""Tool calls cut off by max_tokens come back as OpenAI returns them: in ``tool_calls``, the arguments cut short."""
from __future__ import annotations

import pytest

from helpers.server import structured
from helpers.server.chat_template import PROJECT_CALLS, CallFormat

FUNCTIONS = [{"name": "lookup_cpt_code"}, {"name": "submit_claim"}]
QWEN = CallFormat(opening="<tool_call>\n", separator="\n</tool_call>\n<tool_call>\n", closing="\n</tool_call>", native=True)


@pytest.mark.parametrize("text, before, calls", [
    ('{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {"query": "Lipid pa', None, [("lookup_cpt_code", '{"query": "Lipid pa')]),
    ('{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {"query": "x"}}, {"name": "submit_claim", "arguments": {"co',
     None, [("lookup_cpt_code", '{"query": "x"}'), ("submit_claim", '{"co')]),
    ('{"tool_calls": [{"name": "submit_cl', None, [("submit_claim", "")]),  # a name cut short, one function begins so
    ('{"tool_calls": [{"na', None, []),
    ('{"tool_ca', None, []),  # cut within the opening
    ('Looking it up.\n{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {', "Looking it up.", [("lookup_cpt_code", "{")]),
])
def test_calls_cut_short_are_read_with_their_arguments_so_far(text, before, calls):
    content, read = structured.read_cut_tool_calls(text, FUNCTIONS, PROJECT_CALLS)
    assert content == before and [(c["function"]["name"], c["function"]["arguments"]) for c in read] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in read)


def test_a_templates_own_format_is_read_cut_too_and_plain_text_is_not_a_call():
    content, read = structured.read_cut_tool_calls('<tool_call>\n{"name": "submit_claim", "arguments": {"code": "8006', FUNCTIONS, QWEN)
    assert content is None and read[0]["function"] == {"name": "submit_claim", "arguments": '{"code": "8006'}
    assert structured.read_cut_tool_calls("Lipid panel - CPT Code: 8006", FUNCTIONS, PROJECT_CALLS) is None
    # a whole call whose name is no text (a model may write any JSON) is no call of an offered function
    content, read = structured.read_cut_tool_calls('{"tool_calls": [{"name": {"x": 1}, "arguments": {}}, {"na', FUNCTIONS, PROJECT_CALLS)
    assert read == []
