"""Graders, as OpenAI defines them for reinforcement fine-tuning and its ``/v1/fine_tuning/alpha/graders`` endpoints:
what each checks, its templates, and a run's answer (the ``openai`` package's ``GraderRunResponse``).

- ``string_check``: ``eq``, ``ne``, ``like`` (the reference is in the input), ``ilike`` (the same, ignoring case): 1 or 0.
- ``text_similarity``: ``fuzzy_match`` (rapidfuzz's normalised Indel similarity, ``fuzz.ratio`` / 100), ``bleu``
  (NLTK's sentence BLEU on whitespace tokens, smoothed so that a short answer is not 0 for a missing 4-gram), ``gleu``
  (NLTK's sentence GLEU), ``rouge_1`` ... ``rouge_5`` and ``rouge_l`` (Google's ``rouge-score``, F-measure). ``cosine``
  needs an embedding model and ``meteor`` WordNet's data; neither is on this machine, and asking for them is a 400.
- ``python``: the source defines ``grade(sample, item) -> float``; it runs in a process of its own with no network,
  without the server's data or the workbook's cache (keys, models), in a fresh process tree, with limits on time,
  memory and output (:data:`PYTHON_LIMITS`). A grader that fails, hangs or returns a non-number gets reward 0 and says
  why in ``metadata.errors``.
- ``multi``: named graders combined by ``calculate_output``, a formula of their names, numbers, ``+ - * / ^`` and
  ``min max abs floor ceil exp sqrt log``.
- ``score_model`` and ``label_model``: a model the server serves (a base or a fine-tuned model) reads the grader's
  ``input`` messages (templates, text only) and answers; ``score_model`` takes the first number of its answer, which
  must lie in ``range`` (default [0, 1]), as the score; ``label_model`` takes its answer as one of ``labels`` (case and
  surrounding punctuation aside) and scores 1 for a passing label, 0 for another. An answer that is neither is a
  ``model_grader_parse_error`` (reward 0). Who runs the model is the caller's :data:`Judge`: the inference engine for
  ``graders.run``, the job's own copy of the base while a reinforcement job trains (so a job's model grader must be on
  the job's base model).

Templates are OpenAI's: ``{{ sample.output_text }}``, ``{{ sample.output_json.field }}`` (when the sample is JSON),
``{{ item.field }}`` (the dataset row). They are rendered by Jinja's sandbox; a template that names anything but
``sample`` and ``item``, or that does not parse, is a 400 naming the field.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jinja2
import jinja2.meta
import jinja2.sandbox
import pydantic
from openai.types.fine_tuning.alpha import GraderRunResponse
from openai.types.graders import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)

from helpers.openai_models import ready
from helpers.paths import user_cache_dir
from helpers.server.errors import bad_request

TYPES: dict[str, type[pydantic.BaseModel]] = {
    "string_check": StringCheckGrader, "text_similarity": TextSimilarityGrader, "python": PythonGrader, "multi": MultiGrader,
    "score_model": ScoreModelGrader, "label_model": LabelModelGrader}
# built now: a job's thread checks its grader at each step while a request may check one (helpers.openai_models)
ready(*TYPES.values(), GraderRunResponse)
MODEL_GRADERS = ("score_model", "label_model")
NO_DATA = {"cosine": "an embedding model", "meteor": "WordNet's data (NLTK downloads it from the internet)"}
TEMPLATE_FIELDS = {"string_check": ("input", "reference"), "text_similarity": ("input", "reference")}
FORMULA_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
                     "sqrt": math.sqrt, "log": math.log}
#: the longest answer a grader model may write here (``sampling_params.max_completions_tokens``), and its default: a
#: score or a label is a few tokens
MAX_JUDGE_TOKENS, JUDGE_TOKENS = 256, 16
#: the python grader's process: CPU seconds, wall seconds, address space, bytes it may print
PYTHON_LIMITS = {"cpu_s": 10, "wall_s": 20, "memory_bytes": 2 << 30, "output_bytes": 1 << 20}
_ENV = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class GraderError(ValueError):
    """A grader the server cannot run: ``param`` names the field, as a 400 does."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Grader:
    """A checked grader: the ``openai`` type of its kind, and for ``multi`` its graders by name and its formula."""

    spec: Any
    graders: dict[str, Grader] = field(default_factory=dict)
    formula: ast.Expression | None = None

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def type(self) -> str:
        return str(self.spec.type)


# -- checking -------------------------------------------------------------------------------------------------------
def check(raw: Any, param: str = "grader") -> Grader:
    """``raw`` as a grader the server can run, or a :class:`GraderError` naming the field (``param`` is its path)."""
    if not isinstance(raw, dict):
        raise GraderError(f"'{param}' must be an object with a 'type' ({', '.join(TYPES)}).", param)
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise GraderError(f"'{param}.type' must be one of {', '.join(TYPES)}, got {kind!r}.", f"{param}.type")
    body = dict(raw)
    inner = body.pop("graders", None) if kind == "multi" else None
    try:
        spec: Any = TYPES[kind].model_validate({**body, **({"graders": _placeholder()} if kind == "multi" else {})})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([param, *(str(part) for part in first["loc"])])
        got = f", got {first['input']!r}" if first["type"] != "missing" else ""
        raise GraderError(f"'{where}': {first['msg']}{got}.", where) from None
    if kind == "text_similarity" and spec.evaluation_metric in NO_DATA:
        raise GraderError(f"'{param}.evaluation_metric' {spec.evaluation_metric!r} needs {NO_DATA[spec.evaluation_metric]}, "
                          "which this machine does not have; use fuzzy_match, bleu, gleu or a rouge metric.",
                          f"{param}.evaluation_metric")
    for name in TEMPLATE_FIELDS.get(kind, ()):
        _check_template(getattr(spec, name), f"{param}.{name}")
    if kind in MODEL_GRADERS:
        _check_model_grader(spec, param)
    if kind == "python":
        try:
            compile(spec.source, "<grader>", "exec")
        except SyntaxError as exc:
            raise GraderError(f"'{param}.source' does not compile: {exc.msg} (line {exc.lineno}).", f"{param}.source") from None
        if "def grade" not in spec.source:
            raise GraderError(f"'{param}.source' must define grade(sample, item) returning a number.", f"{param}.source")
        return Grader(spec)
    if kind != "multi":
        return Grader(spec)
    if isinstance(inner, dict) and inner and "type" not in inner:
        graders = {str(name): check(value, f"{param}.graders.{name}") for name, value in inner.items()}
    elif isinstance(inner, dict) and "type" in inner:  # one grader, as the openai package types it: known by its name
        one = check(inner, f"{param}.graders")
        graders = {one.name: one}
    else:
        raise GraderError(f"'{param}.graders' must be an object of graders by name, for example "
                          '{"code": {"type": "string_check", ...}}.', f"{param}.graders")
    return Grader(spec, graders, _formula(spec.calculate_output, set(graders), f"{param}.calculate_output"))


def _placeholder() -> dict[str, Any]:
    """A grader that stands in for ``multi``'s graders while its own fields are validated (they are checked by name)."""
    return {"type": "string_check", "name": "-", "input": "", "reference": "", "operation": "eq"}


def _check_template(text: str, param: str) -> None:
    try:
        names = jinja2.meta.find_undeclared_variables(_ENV.parse(text))
    except jinja2.TemplateSyntaxError as exc:
        raise GraderError(f"'{param}' is not a valid template: {exc.message} (write fields as {{{{ item.field }}}}).", param) from None
    unknown = sorted(names - {"sample", "item"})
    if unknown:
        raise GraderError(f"'{param}' names {', '.join(unknown)}; a template may name only sample (sample.output_text, "
                          "sample.output_json) and item (the dataset row's fields).", param)


def message_text(content: Any, param: str) -> str:
    """A model grader's message content as text: a string, a text part, or a list of them (images and audio are not
    read by the local backend: a :class:`GraderError` naming the field)."""
    parts = content if isinstance(content, list) else [content]
    texts = []
    for i, part in enumerate(parts):
        text = part if isinstance(part, str) else getattr(part, "text", None)
        if not isinstance(text, str):
            where = f"{param}.{i}" if isinstance(content, list) else param
            raise GraderError(f"'{where}': the local backend's model graders read text only (a string, input_text or "
                              f"output_text), got {getattr(part, 'type', type(part).__name__)!r}.", where)
        texts.append(text)
    return "".join(texts)


def _check_model_grader(spec: Any, param: str) -> None:
    if not spec.input:
        raise GraderError(f"'{param}.input' must hold at least one message for the grader model to read.", f"{param}.input")
    for i, message in enumerate(spec.input):
        _check_template(message_text(message.content, f"{param}.input.{i}.content"), f"{param}.input.{i}.content")
    if spec.type == "label_model":
        if not spec.labels or any(not label.strip() for label in spec.labels):
            raise GraderError(f"'{param}.labels' must be a list of non-empty labels.", f"{param}.labels")
        strangers = [label for label in spec.passing_labels if label not in spec.labels]
        if not spec.passing_labels or strangers:
            raise GraderError(f"'{param}.passing_labels' must name some of its labels ({', '.join(spec.labels)})"
                              + (f"; {', '.join(map(repr, strangers))} is not one." if strangers else "."), f"{param}.passing_labels")
        return
    low, high = score_range(spec)
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or len(spec.range or [0, 1]) != 2:
        raise GraderError(f"'{param}.range' must be two numbers, the lower first, got {spec.range!r}.", f"{param}.range")
    sampling = spec.sampling_params
    for name, low_ok, high_ok in (("max_completions_tokens", 1, MAX_JUDGE_TOKENS), ("temperature", 0, 2), ("top_p", 0, 1)):
        value = getattr(sampling, name, None) if sampling else None
        if value is not None and not (low_ok <= value <= high_ok and (name != "top_p" or value > 0)):
            raise GraderError(f"'{param}.sampling_params.{name}' must be {'above' if name == 'top_p' else 'from'} "
                              f"{low_ok} to {high_ok} here, got {value}.", f"{param}.sampling_params.{name}")


def score_range(spec: Any) -> tuple[float, float]:
    """A ``score_model`` grader's range: ``[0, 1]`` unless it says otherwise."""
    bounds = list(spec.range) if spec.range else [0.0, 1.0]
    return (float(bounds[0]), float(bounds[-1])) if bounds else (0.0, 1.0)


def models_asked(grader: Grader, param: str = "grader") -> dict[str, str]:
    """The models a grader asks (its model graders', a ``multi``'s included), each with the field that names it: each
    must exist for the caller."""
    if grader.type in MODEL_GRADERS:
        return {str(grader.spec.model): f"{param}.model"}
    asked: dict[str, str] = {}
    for name, sub in grader.graders.items():
        asked = models_asked(sub, f"{param}.graders.{name}") | asked
    return asked


def _formula(text: str, names: set[str], param: str) -> ast.Expression:
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise GraderError(f"'{param}' is not a formula: {text!r}.", param) from None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load, ast.Add, ast.Sub,
               ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (isinstance(node, ast.Constant) and not isinstance(node.value, (int, float))):
            raise GraderError(f"'{param}' may hold only grader names, numbers, + - * / ^ and "
                              f"{', '.join(FORMULA_FUNCTIONS)}: {text!r}.", param)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FORMULA_FUNCTIONS and not node.keywords):
            raise GraderError(f"'{param}' calls something other than {', '.join(FORMULA_FUNCTIONS)}: {text!r}.", param)
        if isinstance(node, ast.Name) and node.id not in names | set(FORMULA_FUNCTIONS):
            raise GraderError(f"'{param}' names {node.id!r}, which is not one of its graders ({', '.join(sorted(names))}).", param)
    return tree


# -- running --------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One grader's score of one sample; what went wrong (``metadata.errors``' flags, a sentence, the field at fault)."""

    score: float
    flags: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None
    param: str | None = None
    sub: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.flags)


@dataclass(frozen=True)
class Sandbox:
    """Where python graders run: what they must not see (the server's data folder, the workbook's cache and its key
    file), covered by empty folders in their process."""

    hidden: tuple[Path, ...] = ()

    @classmethod
    def for_server(cls, data_dir: Path) -> Sandbox:
        folders = (Path(data_dir), user_cache_dir())
        return cls(tuple(folder.resolve() for folder in folders if folder.is_dir()))


def sample_namespace(model_sample: str) -> dict[str, Any]:
    """The ``sample`` a template and a python grader see: the text, and its JSON when it is JSON."""
    try:
        output_json = json.loads(model_sample)
    except ValueError:
        output_json = None
    return {"output_text": model_sample, "output_json": output_json}


@dataclass(frozen=True)
class JudgeAsk:
    """What a model grader asks of its model: the rendered messages and how to sample."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int = JUDGE_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class JudgeUnavailable(RuntimeError):
    """The grader model could not answer (not loaded, deleted, on another base): the sample fails, not the job."""


#: runs a model grader's model: its answer's text (or :class:`JudgeUnavailable`)
Judge = Callable[[JudgeAsk], str]
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _ask_model(grader: Grader, sample: dict[str, Any], row: dict[str, Any], judge: Judge | None, param: str) -> Outcome:
    spec = grader.spec
    messages = []
    for i, message in enumerate(spec.input):
        try:
            messages.append({"role": "system" if message.role == "developer" else message.role,
                             "content": _render(message_text(message.content, f"{param}.input.{i}.content"), sample, row)})
        except jinja2.UndefinedError as exc:
            fields = ", ".join(sorted(row)) or "none"
            return Outcome(0.0, {"invalid_variable_error": True}, f"'{param}.input.{i}.content': {exc.message} (the item's "
                           f"fields: {fields}).", f"{param}.input.{i}.content")
    sampling = spec.sampling_params if spec.type == "score_model" else None
    ask = JudgeAsk(str(spec.model), messages, (sampling.max_completions_tokens if sampling else None) or JUDGE_TOKENS,
                   (sampling.temperature if sampling else None) or 0.0, (sampling.top_p if sampling else None) or 1.0,
                   sampling.seed if sampling else None)
    if judge is None:
        return Outcome(0.0, {"model_grader_server_error": True}, "no model can answer for this grader here", param)
    try:
        answer = judge(ask).strip()
    except JudgeUnavailable as exc:
        return Outcome(0.0, {"model_grader_server_error": True, "model_grader_server_error_details": str(exc)}, str(exc), f"{param}.model")
    if spec.type == "label_model":
        said = answer.strip(" \t\n.,;:!?\"'`*").casefold()
        label = next((label for label in spec.labels if label.casefold() == said), None)
        if label is None:
            return Outcome(0.0, {"model_grader_parse_error": True}, f"{spec.model} answered {answer[:200]!r}, which is not "
                           f"one of the labels ({', '.join(spec.labels)}).", param)
        return Outcome(float(label in spec.passing_labels))
    low, high = score_range(spec)
    found = _NUMBER.search(answer)
    score = float(found.group()) if found else None
    if score is None or not low <= score <= high:
        return Outcome(0.0, {"model_grader_parse_error": True}, f"{spec.model} answered {answer[:200]!r}, which holds no "
                       f"number from {low:g} to {high:g}.", param)
    return Outcome(score)


def grade(grader: Grader, model_sample: str, item: Any, sandbox: Sandbox, param: str = "grader",
          judge: Judge | None = None) -> Outcome:
    """``grader``'s score of ``model_sample`` for the dataset row ``item`` (``param``: the grader's path, for errors;
    ``judge``: who runs a model grader's model)."""
    sample, row = sample_namespace(model_sample), item if isinstance(item, dict) else {}
    kind = grader.type
    if kind == "python":
        return run_python([grader], sample, row, sandbox)[0]
    if kind in MODEL_GRADERS:
        return _ask_model(grader, sample, row, judge, param)
    if kind == "multi":
        parts = {name: grade(sub, model_sample, item, sandbox, f"{param}.graders.{name}", judge) for name, sub in grader.graders.items()}
        scores = {name: part.score for name, part in parts.items()}
        failed = next((part for part in parts.values() if part.failed), None)
        try:
            score = _evaluate(grader.formula, scores)
        except (ArithmeticError, ValueError) as exc:
            return Outcome(0.0, {"other_error": True}, f"{param}.calculate_output: {exc}", f"{param}.calculate_output", scores)
        if failed is not None:
            return Outcome(score, failed.flags, failed.detail, failed.param, scores)
        return Outcome(score, sub=scores)
    texts = []
    for name in ("input", "reference"):
        try:
            texts.append(_render(getattr(grader.spec, name), sample, row))
        except jinja2.UndefinedError as exc:
            fields = ", ".join(sorted(row)) or "none"
            return Outcome(0.0, {"invalid_variable_error": True}, f"'{param}.{name}': {exc.message} (the item's fields: {fields}).",
                           f"{param}.{name}")
    text, reference = texts
    if kind == "string_check":
        return Outcome(float(_string_check(grader.spec.operation, text, reference)))
    return Outcome(similarity(grader.spec.evaluation_metric, text, reference))


def _render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    return _ENV.from_string(template).render(sample=sample, item=item)


def _string_check(operation: str, text: str, reference: str) -> bool:
    return {"eq": text == reference, "ne": text != reference, "like": reference in text,
            "ilike": reference.lower() in text.lower()}[operation]


def similarity(metric: str, text: str, reference: str) -> float:
    """``text`` against ``reference`` by ``metric``, in [0, 1]."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100
    if metric in ("bleu", "gleu"):
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from nltk.translate.gleu_score import sentence_gleu

        hypothesis, references = text.split(), [reference.split()]
        if not hypothesis or not references[0]:
            return float(hypothesis == references[0])
        if metric == "gleu":
            return float(sentence_gleu(references, hypothesis))
        return float(sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1))
    from rouge_score import rouge_scorer

    name = "rougeL" if metric == "rouge_l" else f"rouge{metric.rsplit('_', 1)[1]}"
    return float(rouge_scorer.RougeScorer([name]).score(reference, text)[name].fmeasure)


def _evaluate(tree: ast.Expression | None, scores: dict[str, float]) -> float:
    """``multi``'s formula (checked by :func:`_formula`) with its graders' scores."""
    operators: dict[type, Callable[..., Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                 ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant):
            return float(cast(float, node.value))  # numbers only (checked by _formula)
        if isinstance(node, ast.Name):
            return scores[node.id]
        if isinstance(node, ast.UnaryOp):
            return float(operators[type(node.op)](value(node.operand)))
        if isinstance(node, ast.BinOp):
            return float(operators[type(node.op)](value(node.left), value(node.right)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return float(FORMULA_FUNCTIONS[node.func.id](*(value(a) for a in node.args)))
        raise ValueError(f"cannot evaluate {ast.dump(node)}")

    if tree is None:
        raise ValueError("no formula")
    result = value(tree.body)
    if not math.isfinite(result):
        raise ValueError(f"the formula gave {result}")
    return result


# -- the python grader's sandbox ----------------------------------------------------------------------------------
_RUNNER = r"""
import json, math, resource, signal, sys
request = json.loads(sys.stdin.read())
limits = request["limits"]
def out_of_time(*_):
    raise TimeoutError(f"it used more than its {limits['cpu_s']} CPU seconds")
signal.signal(signal.SIGXCPU, out_of_time)  # the soft limit; the hard one, a second later, kills
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"], limits["output_bytes"]))
results = []
for source, sample, item in request["cases"]:
    namespace = {"__name__": "grader"}
    try:
        exec(compile(source, "<grader>", "exec"), namespace)
        score = namespace["grade"](sample, item)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            results.append({"error": f"grade() returned {score!r}, not a finite number"})
        else:
            results.append({"score": float(score)})
    except MemoryError:
        results.append({"error": "MemoryError: it used more than its memory limit"})
    except BaseException as exc:
        results.append({"error": f"{type(exc).__name__}: {exc}"[:500]})
sys.stdout.write(json.dumps(results))
"""


class SandboxMissing(RuntimeError):
    """This machine cannot run a python grader apart from the server."""


def sandbox_command(hidden: list[Path]) -> list[str]:
    """The command that runs this package's Python with no network, in a fresh process tree, with ``hidden`` folders
    (the server's data, the workbook's cache) covered by empty ones: Linux user namespaces (``unshare``)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxMissing("python graders run sandboxed with `unshare` (util-linux), which this machine does not have.")
    mounts = " && ".join(f'mount -t tmpfs none "${i + 1}"' for i in range(len(hidden))) or "true"
    return [unshare, "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--",
            "sh", "-c", f'{mounts} && exec "${len(hidden) + 1}" -I -c "${len(hidden) + 2}"', "sh",
            *(str(path) for path in hidden), sys.executable, _RUNNER]


@functools.cache
def sandbox_works() -> bool:
    """Whether this machine starts the sandbox (user namespaces allowed): checked once, with an empty program."""
    try:
        probe = sandbox_command([])
        probe[-1] = "pass"
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (SandboxMissing, OSError, subprocess.TimeoutExpired):
        return False


def run_python(graders: list[Grader], sample: dict[str, Any], item: dict[str, Any], sandbox: Sandbox) -> list[Outcome]:
    """Each python grader on one sample, in one sandboxed process."""
    request = {"limits": PYTHON_LIMITS, "cases": [[g.spec.source, sample, item] for g in graders]}

    def runtime_error(detail: str) -> Outcome:  # the grader's own doing
        return Outcome(0.0, {"python_grader_runtime_error": True, "python_grader_runtime_error_details": detail}, detail)

    def failed(detail: str) -> list[Outcome]:
        return [runtime_error(detail) for _ in graders]

    def unrun(detail: str) -> list[Outcome]:  # the machine's: the sandbox could not start
        return [Outcome(0.0, {"python_grader_server_error": True, "python_grader_server_error_type": "sandbox"}, detail) for _ in graders]

    with tempfile.TemporaryDirectory(prefix="grader-") as home:
        try:
            done = subprocess.run(sandbox_command(list(sandbox.hidden)), input=json.dumps(request), capture_output=True,
                                  text=True, cwd=home, timeout=PYTHON_LIMITS["wall_s"],
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"})
        except SandboxMissing as exc:
            return unrun(str(exc))
        except subprocess.TimeoutExpired:
            return failed(f"it ran longer than {PYTHON_LIMITS['wall_s']} s")
    try:
        results = json.loads(done.stdout)
    except ValueError:
        if not sandbox_works():
            return unrun(f"the sandbox could not start: {done.stderr.strip()[-300:]}")
        return failed(f"it was stopped without an answer (at its limits: {PYTHON_LIMITS['cpu_s']} "
                      f"CPU seconds, {PYTHON_LIMITS['memory_bytes'] >> 20} MB)")
    return [Outcome(r["score"]) if "score" in r else runtime_error(r["error"]) for r in results]


# -- the endpoints' answers ------------------------------------------------------------------------------------------
ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
               "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
               "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error")


def run_response(grader: Grader, model_sample: str, item: Any, sandbox: Sandbox, judge: Judge | None = None) -> dict[str, Any]:
    """``POST /v1/fine_tuning/alpha/graders/run``'s answer, as the ``openai`` package types it. A template naming a
    field the item does not have is the caller's mistake: a 400 naming the template's field."""
    started = time.perf_counter()
    outcome = grade(grader, model_sample, item, sandbox, judge=judge)
    if outcome.flags.get("invalid_variable_error"):
        raise bad_request(outcome.detail or "A template names a field the item does not have.", outcome.param, code="invalid_grader")
    errors: dict[str, Any] = {flag: bool(outcome.flags.get(flag)) for flag in ERROR_FLAGS}
    errors.update(model_grader_server_error_details=outcome.flags.get("model_grader_server_error_details"),
                  python_grader_runtime_error_details=outcome.flags.get("python_grader_runtime_error_details"),
                  python_grader_server_error_type=outcome.flags.get("python_grader_server_error_type"))
    body = {"reward": outcome.score, "sub_rewards": dict(outcome.sub), "model_grader_token_usage_per_model": {},
            "metadata": {"name": grader.name, "type": grader.type, "errors": errors, "execution_time": time.perf_counter() - started,
                         "scores": outcome.sub or {grader.name: outcome.score}, "token_usage": None, "sampled_model_name": None}}
    return GraderRunResponse.model_validate(body).model_dump(mode="json", by_alias=True)

