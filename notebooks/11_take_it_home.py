# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Take it home: llama.cpp, Ollama, chat templates and stop tokens
# **Time:** about 3 minutes on a 2-core CPU without bf16 kernels (fp32), about 3 with them (estimated there: no training, and the exports and llama.cpp do not use the server's bf16) · **Cost:** $0 (it runs on your machine).

# %% tags=["parameters"]
BACKEND = "local"
TUNED_MODEL = ""  # empty: the newest model notebook 03 trained (05's teacher)
STUDENT_MODEL = ""  # empty: the newest student notebook 05 distilled
EXPORT_DIR = ".workbook/take_home_gguf"  # where the exports are written (relative to the repository)
QUANTS = ["f16", "q8_0"]  # GGUF types run beside the server ("q4_k_m": a third of f16's size, answers less like it)
N_COMPARE = 16  # held-out requests asked of the server and of llama.cpp (0 means all 111)
N_TEMPLATE = 8  # requests for the chat-template and stop-token lesson
RETRIEVED_CODES = 5  # the teacher's prompt carries them, as in 05
MAX_TOKENS = 32

# %%
import pandas as pd
from helpers.course import setup, finetune, retrieval, take_home
from helpers.data import dataprep
from helpers.paths import REPO_ROOT, shown
course = setup("11_take_it_home", BACKEND)
work = REPO_ROOT / EXPORT_DIR

# %% [markdown]
# ## 1. Why
# A model you fine-tuned is only useful where you run models. For small open models that is often llama.cpp (and the
# tools built on it: Ollama, LM Studio), on a laptop or a plain server, no Python stack needed. What breaks most often
# on the way there is not the weights: it is the **chat template** (how a conversation is written as text) and the
# **stop token** (the token that ends the model's turn). Trained on one and run with another, a model answers
# differently, repeats itself, or never stops. This notebook exports the course's models, runs them in llama.cpp beside
# the server, and shows each failure by causing it.

# %% [markdown]
# ## 2. What
# - **Formats**: `workbook export MODEL --format peft|merged|gguf [--quant f16|q8_0|q4_k_m] --out DIR`. `peft` is the
#   adapter alone (transformers + peft, vLLM); `merged` is one Hugging Face folder with the adapter folded into the
#   weights (plain transformers, vLLM); `gguf` is one file llama.cpp loads as it is, written by llama.cpp's own
#   converter, plus an Ollama `Modelfile`.
# - **GGUF**: llama.cpp's file format. Besides the weights (16-bit `f16`, or quantized: `q8_0` about 8 bits per weight,
#   `q4_k_m` about 4.5) it carries the tokenizer, the chat template and the end-of-turn token.
# - **The test**: the same held-out requests to the server and to llama.cpp, greedy decoding on both: are the answers
#   the same text, and is the accuracy the same?
# - **Fast?** The seed's last row says a distilled small model is fast: measured here, in llama.cpp.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Export
# 03's model three ways, and 05's student as GGUF (the first GGUF export merges the adapter, converts, and for the
# shipped base also writes the adapter alone for the very GGUF file the server's base came from).

# %%
tuned, student = finetune.course_model(course.client, TUNED_MODEL), finetune.student_model(course.client, STUDENT_MODEL)
exports = {"peft": take_home.export(tuned, work / "peft", format="peft"), "merged": take_home.export(tuned, work / "merged", format="merged")}
exports |= {f"gguf {quant}": take_home.export(tuned, work / f"gguf-{quant}", quant=quant) for quant in QUANTS}
student_export = take_home.export(student, work / "student-gguf-f16", quant="f16")
folders = {name: work / ("peft" if name == "peft" else "merged" if name == "merged" else f"gguf-{name.split()[1]}") for name in exports}
files = take_home.sizes(folders)
course.record(tuned_model=tuned, student_model=student, export_mb=files.groupby("export")["MB"].sum().to_dict())
files

# %% [markdown]
# The adapter alone is a few MB because it holds only the LoRA matrices; everything else carries the whole model.
# f16 halves the fp32 weights the server holds; q8_0 halves f16 again.

# %% [markdown]
# ### 3.2 What a GGUF file carries
# llama.cpp reads how to chat with a model from the file itself. Here is what ours says, read with the `gguf` package
# (`gguf-dump FILE` prints the same):

# %%
first = folders[f"gguf {QUANTS[0]}"] / exports[f"gguf {QUANTS[0]}"]["gguf"]
meta = take_home.gguf_metadata(first)
course.record(gguf_metadata={k: v for k, v in meta.items() if k != "chat template"})
print({k: v for k, v in meta.items() if k != "chat template"})
print(meta["chat template"])

# %% [markdown]
# The template is SmolLM2's own (the one the server trained with: ChatML, `<|im_start|>role ... <|im_end|>`), and the
# end-of-turn token is `<|im_end|>`: the token every training example ended the answer with, so the model learned to
# write it when it is done.

# %% [markdown]
# ### 3.3 The same answers?
# Each held-out request goes to the server and to llama.cpp (one request at a time, greedy), for each
# GGUF file, and for the adapter alone applied to the 4-bit (Q4_1) GGUF file the server's base model was made from:

# %%
test = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_COMPARE)
llms = {quant: take_home.load(folders[f"gguf {quant}"] / exports[f"gguf {quant}"]["gguf"]) for quant in QUANTS}
adapter = exports[f"gguf {QUANTS[0]}"]
if adapter["adapter_gguf"]:  # the adapter alone, on the Q4_1 GGUF file the server's base was dequantized from
    llms["Q4_1 + adapter"] = take_home.load(adapter["base_gguf"], lora=folders[f"gguf {QUANTS[0]}"] / adapter["adapter_gguf"])
compared = take_home.side_by_side(llms, course.client, tuned, test, MAX_TOKENS)
agreement = take_home.agreement(compared, list(llms))
course.record(agreement=agreement.to_dict(orient="index"))
course.findings("agreement", take_home.agreement_findings(agreement.to_dict(orient="index")))
agreement

# %%
compared[["request", "server", *llms]].head(8)

# %% [markdown]
# ### 3.4 Is the distilled student fast?
# The teacher of notebook 05 is 03's model with five retrieved codes in every prompt; the student answers from the
# one-line instruction. Both in llama.cpp (f16), the same requests:

# %%
teacher_llm = llms["f16"] if "f16" in llms else take_home.load(folders[f"gguf {QUANTS[0]}"] / exports[f"gguf {QUANTS[0]}"]["gguf"])
student_llm = take_home.load(work / "student-gguf-f16" / student_export["gguf"])
with_rag = lambda messages: retrieval.with_retrieval(messages, RETRIEVED_CODES)
speed = pd.DataFrame({"teacher (03 + retrieved codes)": take_home.timings(teacher_llm, test, MAX_TOKENS, prompt=with_rag),
                      "student (05)": take_home.timings(student_llm, test, MAX_TOKENS)}).T
course.record(speed=speed.to_dict(orient="index"))
course.findings("speed", take_home.speed_findings(speed.iloc[0].to_dict(), speed.iloc[1].to_dict()))
speed

# %% [markdown]
# ### 3.5 The chat template and the stop token, taken away
# The same model and requests three ways: as exported; written in another family's template (Llama 2's `[INST]`
# format, which a runtime set up for another model, or a Modelfile copied from one, would use); and with the right
# template but the end-of-turn token never chosen (what a runtime that does not know the stop token does).

# %%
lesson = take_home.template_lesson(first, test[:N_TEMPLATE], MAX_TOKENS)
summary = take_home.template_summary(lesson)
course.record(template=summary.to_dict(orient="index"))
course.findings("template", take_home.template_findings(summary.to_dict(orient="index"), MAX_TOKENS))
summary

# %%
lesson[["request", "way", "answer", "finish", "tokens"]].head(6)

# %% [markdown]
# ### 3.6 Ollama
# The export wrote a `Modelfile` beside the GGUF file: the weights, the template in Ollama's own template language
# (turn for turn the one above: the tests render both and compare), the default system message the template adds,
# the stop token, and greedy decoding. Ollama is not installed on the course machines, so it is not run here; where
# it is installed:
#
# ```
# ollama create billing -f Modelfile
# ollama run billing "Chest X-ray, two views"
# ```

# %%
print(shown(folders[f"gguf {QUANTS[0]}"] / "Modelfile"))
print((folders[f"gguf {QUANTS[0]}"] / "Modelfile").read_text())

# %% [markdown]
# ## 4. Summary
# - `workbook export --format gguf` writes one file llama.cpp runs as it is, made by llama.cpp's own converter, and an
#   Ollama Modelfile; `merged` gives plain transformers (and vLLM) a single folder; `peft` keeps the adapter alone.
# - A model answers as it did in training only with its own chat template and stop token. The GGUF carries both; a
#   runtime that ignores them gets the failures 3.5 measured.
# - Check an export the way 3.3 does: the same requests, greedy, on both sides; count identical answers and compare
#   the accuracy. Differences in a 16-bit file are rare near-ties; quantized files round more.
#
# **Exercises.** (1) Add `"q4_k_m"` to `QUANTS`: how many answers still match, and what does it save? (2) In 3.5,
# write the plain-text prompt in another style (`### Request:` / `### Answer:`): does the model ever find its form?
# (3) Export a model you trained on a brought model (notebook 10, 3.5) and read its GGUF's chat template.
