"""Tool calls and structured output: the one text format training and answering share, and reading calls back."""
from __future__ import annotations

import json

import pytest

from helpers.pricing import catalogue
from helpers.server import chat_template, localmodels, structured, training

LOOKUP = {"name": "lookup_cpt_code", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup_cpt_code", "arguments": '{"query": "lipid panel"}'}}


def test_a_call_is_read_back_in_openais_shape_with_any_text_before_it():
    content, calls = structured.read_tool_calls('Looking it up.\n{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {"query": "x"}}]}', [LOOKUP])
    assert content == "Looking it up." and len(calls) == 1
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "lookup_cpt_code", "arguments": '{"query": "x"}'}
    assert structured.read_tool_calls(chat_template.tool_calls_text([CALL]), [LOOKUP])[0] is None


@pytest.mark.parametrize("text", [
    '{"tool_calls": [{"name": "submit_claim", "arguments": {}}]}',  # a function the request did not offer
    '{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {"query": ',  # cut short
    'Lipid panel - CPT Code: 80061',
    'x{"tool_calls": [{"name": "lookup_cpt_code", "arguments": {}}]}',  # not at the start of a line
])
def test_anything_else_stays_text(text):
    assert structured.read_tool_calls(text, [LOOKUP]) == (text, [])


def test_training_shows_tools_as_answering_does_and_learns_only_the_call():
    chat = localmodels.load_chat(catalogue.resolve_base("gpt-4.1-mini"))
    tokenizer = chat.tokenizer
    messages = [{"role": "user", "content": "lipid panel"}, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    tools = [{"type": "function", "function": LOOKUP}]  # keys not in sorted order: both sides must keep the file's order
    ids, labels = chat.encode_chat(messages, chat_template.functions_of(tools))
    answering = structured.answering({"tools": tools, "messages": messages[:1]})  # what the server does with a request
    prompt = chat.render(messages[:1], answering.function_list, add_generation_prompt=True)
    assert tokenizer.decode(ids).startswith(prompt)  # the prompt a tuned model is trained on is the one it answers
    learned = tokenizer.decode([t for t in labels if t != training.IGNORE])
    assert learned == chat_template.tool_calls_text([CALL]) + tokenizer.eos_token
    assert json.loads(learned.removesuffix(tokenizer.eos_token))["tool_calls"][0]["arguments"] == {"query": "lipid panel"}


def accepts(grammar: str, tokenizer, text: str) -> bool:
    """Whether llguidance's matcher takes ``text`` whole and may end there."""
    import llguidance
    import llguidance.hf

    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), llguidance.LLMatcher.grammar_from_lark(grammar))
    return all(matcher.consume_token(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]) and matcher.is_accepting()


def test_required_calls_follow_each_functions_parameters():
    schemas = structured.tool_call_schemas([LOOKUP, {"name": "ping"}], None)
    assert [v["properties"]["name"]["const"] for v in schemas] == ["lookup_cpt_code", "ping"]
    assert schemas[0]["properties"]["arguments"] == {**LOOKUP["parameters"], "additionalProperties": False}
    assert schemas[1]["properties"]["arguments"] == {"type": "object"}  # no declared keys: free-form arguments
    tokenizer = localmodels.load_tokenizer(catalogue.default_local_base())
    tools = [{"type": "function", "function": f} for f in (LOOKUP, {"name": "ping"})]
    one = structured.answering({"tools": tools, "tool_choice": "required", "parallel_tool_calls": False}).grammar
    many = structured.answering({"tools": tools, "tool_choice": "required"}).grammar
    lookup, ping = {"name": "lookup_cpt_code", "arguments": {"query": "x"}}, {"name": "ping", "arguments": {}}
    assert accepts(one, tokenizer, json.dumps({"tool_calls": [lookup]})) and accepts(many, tokenizer, json.dumps({"tool_calls": [lookup, ping]}))
    assert not accepts(one, tokenizer, json.dumps({"tool_calls": [lookup, ping]}))  # parallel_tool_calls false: one call
    assert not accepts(many, tokenizer, json.dumps({"tool_calls": [{"name": "lookup_cpt_code", "arguments": {"query": 1}}]}))
    with pytest.raises(structured.RequestError) as caught:
        structured.compile_grammar({"type": "string", "pattern": "(?=a)"}, "response_format")
    assert caught.value.param == "response_format" and "look-around" in str(caught.value)


def test_a_schema_the_server_cannot_follow_is_blamed_on_the_parameter_that_sent_it():
    bad = {"type": "object", "properties": {"q": {"type": "string", "pattern": "(?=a)"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": bad}}]
    good_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(structured.RequestError) as caught:
        structured.answering({"tools": tools, "response_format": good_format})
    assert (caught.value.param, caught.value.code) == ("tools", "invalid_json_schema")
    with pytest.raises(structured.RequestError) as caught:
        structured.answering({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}})
    assert caught.value.param == "response_format"
    assert structured.answering({"tools": tools, "tool_choice": "none"}).grammar is None  # 'none' never constrains


def test_arguments_hold_only_the_keys_a_function_declares_unless_it_opens_them():
    """OpenAI's strict reading of a tool's schema: a key the function does not declare cannot be written (a small
    model otherwise copies the schema into its arguments); ``additionalProperties: true`` still opens an object."""
    tokenizer = localmodels.load_tokenizer(catalogue.default_local_base())
    nested = {"name": "claim", "parameters": {"type": "object", "properties": {"line": {"type": "object", "properties": {"code": {"type": "string"}}}},
                                              "required": ["line"]}}
    opened = {"name": "note", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": True}}
    grammar = structured.answering({"tools": [{"type": "function", "function": f} for f in (LOOKUP, nested, opened)],
                                    "tool_choice": "required", "parallel_tool_calls": False}).grammar

    def call(name: str, arguments: dict) -> str:
        return json.dumps({"tool_calls": [{"name": name, "arguments": arguments}]})
    assert accepts(grammar, tokenizer, call("lookup_cpt_code", {"query": "x"}))
    assert not accepts(grammar, tokenizer, call("lookup_cpt_code", {"query": "x", "type": "string"}))
    assert accepts(grammar, tokenizer, call("claim", {"line": {"code": "80061"}}))
    assert not accepts(grammar, tokenizer, call("claim", {"line": {"code": "80061", "units": 1}}))  # at any depth
    assert accepts(grammar, tokenizer, call("note", {"text": "x", "extra": 1}))
