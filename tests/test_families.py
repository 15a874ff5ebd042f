"""Chat templates of other families (Llama 3, Qwen 2.5 with tools, Gemma 2 with no system role, ChatML with
{% generation %} marks, a plain-text style): the loss mask covers exactly each learned assistant turn and its
end-of-turn token, token by token; a template the server cannot train with is refused with the reason; an answer
stops at any of the model's end-of-turn tokens."""
from __future__ import annotations

import json

import pytest
from families import CHATML_MARKED, FAMILIES, PLAIN, build, retemplated_smollm2
from transformers import AutoTokenizer

from helpers.server import localmodels
from helpers.server.chat_template import IGNORE, ChatTemplate, TemplateProblem
from helpers.server.inference import Engine, Sampling

CONVERSATION = [
    {"role": "system", "content": "You code procedures."},
    {"role": "user", "content": "lipid panel"},
    {"role": "assistant", "content": "Lipid panel - CPT Code: 80061"},
    {"role": "user", "content": "and a chest x-ray?"},
    {"role": "assistant", "content": "Not learned", "weight": 0},
    {"role": "user", "content": "the cataract one"},
    {"role": "assistant", "content": "Cataract surgery - CPT Code: 66984"},
]
LEARNED = ["Lipid panel - CPT Code: 80061", "Cataract surgery - CPT Code: 66984"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {name: (build(name, root / name), FAMILIES[name].end_of_turn) for name in FAMILIES}
    made["plain"] = (retemplated_smollm2(root / "plain"), "<|endoftext|>")
    made["chatml-marked"] = (retemplated_smollm2(root / "marked", CHATML_MARKED, "<|im_end|>"), "<|im_end|>")
    return made


def chat_of(folder) -> ChatTemplate:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ChatTemplate.of(tokenizer, localmodels.stop_token_ids(folder, tokenizer), folder.name)


@pytest.mark.parametrize("family", [*FAMILIES, "plain", "chatml-marked"])
def test_the_mask_covers_each_learned_assistant_turn_and_its_end_of_turn_token(folders, family):
    folder, end_of_turn = folders[family]
    chat = chat_of(folder)
    tokenizer = chat.tokenizer
    ids, labels = chat.encode_chat(CONVERSATION)
    assert len(ids) == len(labels)
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels))  # a label is its token or nothing
    # token by token: the learned tokens are each learned answer as the tokenizer writes it, then the end-of-turn token
    expected = []
    for answer in LEARNED:
        expected += tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(end_of_turn)]
    assert [label for label in labels if label != IGNORE] == expected
    # ... and they are where the answers are: each run of learned tokens is one answer, right after its prompt
    runs, inside = [], False
    for position, label in enumerate(labels):
        if label != IGNORE and not inside:
            runs.append(position)
        inside = label != IGNORE
    assert len(runs) == 2
    for start, answer, asked in zip(runs, LEARNED, (CONVERSATION[:2], CONVERSATION[:6])):
        assert ids[:start] == chat.prompt_ids(asked)  # trained after exactly the tokens it is given when asked
        assert tokenizer.decode(ids[start:]).startswith(answer + end_of_turn)
    assert "Not learned" in tokenizer.decode(ids)  # the weight-0 turn is in the prompt, not in the labels


def test_a_template_without_a_system_role_gets_the_system_text_before_the_first_user_message(folders):
    chat = chat_of(folders["gemma2"][0])
    assert chat.folds_system
    assert chat.render(CONVERSATION[:2], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nYou code procedures.\n\nlipid panel<end_of_turn>\n<start_of_turn>model\n")
    assert not chat_of(folders["llama3"][0]).folds_system


def test_generation_marks_and_turn_differences_give_the_same_labels(folders):
    marked = chat_of(folders["chatml-marked"][0])
    assert marked.marked
    unmarked = ChatTemplate(marked.tokenizer, marked.stop_ids, folds_system=False, marked=False)
    assert marked.encode_chat(CONVERSATION) == unmarked.encode_chat(CONVERSATION)


def test_a_template_the_server_cannot_train_with_is_refused_with_the_reason(folders):
    tokenizer = AutoTokenizer.from_pretrained(folders["llama3"][0])
    stops = localmodels.stop_token_ids(folders["llama3"][0], tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(TemplateProblem, match="tiny has no chat template"):
        ChatTemplate.of(tokenizer, stops, "tiny")
    tokenizer.chat_template = PLAIN.replace("'<|endoftext|>' + ", "")  # answers never closed
    with pytest.raises(TemplateProblem, match="does not close an assistant turn with an end-of-turn token"):
        ChatTemplate.of(tokenizer, stops, "tiny")


def test_an_answer_ends_at_any_of_the_models_end_of_turn_tokens(folders):
    chat = chat_of(folders["llama3"][0])
    tokenizer = chat.tokenizer
    words = tokenizer("Done now", add_special_tokens=False)["input_ids"]
    for stop in ("<|eot_id|>", "<|end_of_text|>"):  # generation_config lists both
        new = [*words, tokenizer.convert_tokens_to_ids(stop), *words]
        assert Engine._finish(chat, new, Sampling(max_tokens=20)) == ("Done now", "stop", len(words) + 1)
    assert Engine._finish(chat, words, Sampling(max_tokens=2)) == ("Done now", "length", len(words))


def test_a_gguf_file_is_brought_by_converting_it_once(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    from helpers.pricing import catalogue
    from helpers.server.bases import bring

    shipped = catalogue.default_local_base()
    gguf = Path(list(importlib.util.find_spec(shipped.package).submodule_search_locations)[0]) / shipped.gguf_file
    monkeypatch.setenv("WORKBOOK_MODEL_CACHE", str(tmp_path / "cache"))
    base = bring("smol-gguf", str(gguf), "--model smol-gguf=...")
    folder = localmodels.weights_dir(base)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("brought-SmolLM2-135M-Instruct.Q4_1-")
    assert (base.context_length, base.max_completion_tokens) == (8192, 4096)
    chat = localmodels.load_chat(base)
    assert chat.stop_ids == {chat.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert localmodels.weights_dir(base) == folder  # made once


LOOKUP = {"name": "lookup_cpt_code", "description": "Find a procedure's CPT code.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup_cpt_code", "arguments": '{"query": "lipid panel"}'}}


@pytest.mark.parametrize("family", [*FAMILIES, "plain"])
def test_tools_go_through_a_template_that_renders_them_and_calls_come_back(folders, family):
    """Qwen's template renders the tools it is given and writes calls as <tool_call> blocks: its format is read from
    it, training learns the calls as Qwen writes them, the grammar for tool_choice "required" follows it and the calls
    are read back. A template without tools gets the project's format (the functions in the system message)."""
    from test_structured import accepts

    from helpers.server import structured
    from helpers.server.chat_template import PROJECT_CALLS

    chat = chat_of(folders[family][0])
    tokenizer = chat.tokenizer
    messages = [{"role": "user", "content": "lipid panel"}, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    ids, labels = chat.encode_chat(messages, [LOOKUP])
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert ids[:start] == chat.prompt_ids(messages[:1], [LOOKUP])  # trained after the prompt it answers, tools included
    learned = tokenizer.decode([label for label in labels if label != IGNORE])
    if family != "qwen2":
        assert chat.calls == PROJECT_CALLS and '"name": "lookup_cpt_code"' in tokenizer.decode(ids[:start])
        return
    assert chat.calls.native and (chat.calls.opening, chat.calls.closing) == ("<tool_call>\n", "\n</tool_call>")
    assert chat.calls.separator == "\n</tool_call>\n<tool_call>\n"
    assert "<tools>" in tokenizer.decode(ids[:start]) and "You can call these functions" not in tokenizer.decode(ids)
    call_text = '<tool_call>\n{"name": "lookup_cpt_code", "arguments": {"query": "lipid panel"}}\n</tool_call>'
    assert learned == call_text + "<|im_end|>"
    answering = structured.answering({"tools": [{"type": "function", "function": LOOKUP}], "tool_choice": "required"}, chat.calls)
    assert accepts(answering.grammar, tokenizer, call_text) and not accepts(answering.grammar, tokenizer, '{"tool_calls": []}')
    two = call_text + "\n" + call_text.replace("lipid panel", "chest x-ray")
    assert accepts(answering.grammar, tokenizer, two)
    content, calls = structured.read_tool_calls("Looking both up.\n" + two, [LOOKUP], chat.calls)
    assert content == "Looking both up." and [json.loads(c["function"]["arguments"])["query"] for c in calls] == ["lipid panel", "chest x-ray"]
    assert structured.read_tool_calls("<tool_call>\n{\"name\": \"refund\", \"arguments\": {}}\n</tool_call>", [LOOKUP], chat.calls)[1] == []
