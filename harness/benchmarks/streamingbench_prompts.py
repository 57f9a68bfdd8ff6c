"""StreamingBench prompt templates: our own wording in the official structure, or the official strings read
from a user's checkout of THUNLP-MT/StreamingBench with `ast` (text only, never executed).

Positional `{}` fill as the official constants do; the texts the official code builds in f-strings (the SQA
context entry, the proactive trigger) become named templates over a question's fields.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.benchmarks.fields import parse_official_source
from harness.errors import ConfigError


@dataclass(frozen=True)
class Templates:
    """Prompt templates. Positional `{}` as the official constants; named fields where the official code
    builds the text in an f-string: {question}, {time_stamp}, {answer}, {ground_truth_output}, {options[i]}."""

    mcq: str  # StreamingBench.py PROMPT_TEMPLATE: question, four options (then MCQ_SUFFIX)
    sqa: str  # StreamingBenchSQA.py PROMPT_TEMPLATE: context, question, four options
    context_header: str  # SQA: opens the context once there is an earlier question (plain text, no fields)
    context_entry: str  # SQA: one earlier question with its ground-truth answer
    proactive: str  # StreamingBenchProactive.py PROMPT_TEMPLATE_PROACTIVE: the trigger or the bare question
    trigger: str  # proactive: the yes/no question polled until it fires


# Our own wording, in the structure of the official templates (benchmarks.md 2.4).
OWN_TEMPLATES = Templates(
    mcq=(
        "You are given frames of a video and a question about it with four options. Look at the frames closely, "
        "pick the option that answers the question best, and reply with its letter only (A, B, C or D).\n\n"
        "Question: {}\n\nOptions:\n{}\n{}\n{}\n{}"
    ),
    sqa=(
        "You are given frames of a video, notes on questions already answered about it, and a new question with "
        "four options. Use the frames and the notes, pick the option that answers the new question best, and "
        "reply with its letter only (A, B, C or D).\n\n{}\n\n"
        "The new question follows; answer it, not one of the earlier ones.\nQuestion: {}\n\n"
        "Options:\n{}\n{}\n{}\n{}\n\nThe best option is:"
    ),
    context_header="Notes: questions asked earlier about this video, each with its correct answer. ",
    context_entry=(
        "At {time_stamp} this was asked: Question: {question}; Options: {options[0]}, {options[1]}, "
        "{options[2]}, {options[3]}; Answer: {answer}; "
    ),
    proactive=(
        "You are given frames of a video and a request about it. Check carefully whether what the frames show "
        "meets the request's condition, then give the output it asks for.\n\nQuestion: {}\n\nThe answer is:\n"
    ),
    trigger='{question} Has the moment come to output "{ground_truth_output}"? Reply with yes or no only.',
)
OFFICIAL_FILES = {"mcq": "StreamingBench.py", "sqa": "StreamingBenchSQA.py", "proactive": "StreamingBenchProactive.py"}
# what an official f-string may insert, by its expression -> our field name
_LOCALS = {"ques": "question"}
_QUESTION_KEYS = ("question", "time_stamp", "answer", "ground_truth_output")


def fields(question: dict[str, Any], options: tuple[str, ...] = ("",) * 4) -> dict[str, Any]:
    """What a named template may insert from a question (`options`: the four it shows)."""
    return {key: question.get(key, "") for key in _QUESTION_KEYS} | {"options": list(options)}


def fill(template: str, *values: str) -> str:
    try:
        return template.format(*values)
    except (IndexError, KeyError) as e:
        raise ConfigError(f"dataset.prompts.official_dir: a template has a placeholder we cannot fill: {e}") from None


def read_templates(official_dir: Path) -> Templates:
    """The official prompt constants of src/benchmark/, plus the two texts the official code builds in f-strings
    (the SQA context entry, the proactive trigger), turned into named templates."""
    trees = {kind: _parse(official_dir / "src" / "benchmark" / name) for kind, name in OFFICIAL_FILES.items()}
    templates = Templates(
        mcq=_constant(*trees["mcq"], "PROMPT_TEMPLATE"),
        sqa=_constant(*trees["sqa"], "PROMPT_TEMPLATE"),
        context_header=_assigned(*trees["sqa"], "context", "the SQA context's opening string", ast.Constant),
        context_entry=_assigned(*trees["sqa"], "context", "the SQA context's f-string", ast.JoinedStr),
        proactive=_constant(*trees["proactive"], "PROMPT_TEMPLATE_PROACTIVE"),
        trigger=_assigned(*trees["proactive"], "query", "the proactive trigger's f-string", ast.JoinedStr),
    )
    check_templates(templates, official_dir)
    return templates


def check_templates(templates: Templates, where: Path | str) -> None:
    """Fill every template once, so a placeholder we cannot fill fails at config time, not mid-run."""
    named = {key: "x" for key in _QUESTION_KEYS} | {"options": ["A. x"] * 4}
    slots = {"mcq": 5, "sqa": 6, "proactive": 1, "context_entry": 0, "trigger": 0}  # positional values given
    for name, count in slots.items():
        try:
            getattr(templates, name).format(*["x"] * count, **(named if not count else {}))
        except (IndexError, KeyError, ValueError) as e:
            raise ConfigError(f"dataset.prompts.official_dir={where}: cannot fill the {name} template: {e}") from None


def _parse(path: Path) -> tuple[ast.Module, Path]:
    return parse_official_source(path, "THUNLP-MT/StreamingBench"), path


def _constant(tree: ast.Module, path: Path, name: str) -> str:
    """A module-level string constant; a later assignment wins, as it would when the module runs."""
    value = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not isinstance(value, str):
                raise ConfigError(f"dataset.prompts.official_dir: {path}: {name} must be a string literal")
    if value is None:
        raise ConfigError(f"dataset.prompts.official_dir: {path}: no string constant {name}")
    return value


def _assigned(tree: ast.Module, path: Path, target: str, what: str, kind: type[ast.expr]) -> str:
    """The first non-empty string (kind Constant) or f-string (kind JoinedStr) assigned or added to `target`
    anywhere in the file: the string as it is, an f-string as a template whose expressions are named fields."""
    nodes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AugAssign)
        and any(isinstance(t, ast.Name) and t.id == target for t in _targets(node))
        and isinstance(node.value, kind)
        and (kind is not ast.Constant or (isinstance(node.value.value, str) and node.value.value))
    ]
    if not nodes:
        raise ConfigError(f"dataset.prompts.official_dir: {path}: {what} (assigned or added to `{target}`) not found")
    value = min(nodes, key=lambda n: (n.lineno, n.col_offset)).value
    if isinstance(value, ast.Constant):  # plain text, used as it is
        return value.value
    return "".join(_piece(part, path, what) for part in value.values)  # type: ignore[attr-defined]


def _targets(node: ast.Assign | ast.AugAssign) -> list[ast.expr]:
    return node.targets if isinstance(node, ast.Assign) else [node.target]


def _piece(node: ast.expr, path: Path, what: str) -> str:
    """One part of an f-string as str.format text: literal text escaped, an expression as its named field."""
    if isinstance(node, ast.Constant):
        return str(node.value).replace("{", "{{").replace("}", "}}")
    assert isinstance(node, ast.FormattedValue)
    expr, name = node.value, None
    if isinstance(expr, ast.Name):
        name = _LOCALS.get(expr.id)
    elif isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name) and isinstance(expr.slice, ast.Constant):
        base, key = expr.value.id, expr.slice.value
        if base == "question" and key in _QUESTION_KEYS:
            name = key
        elif base == "options" and key in (0, 1, 2, 3):
            name = f"options[{key}]"
    if name is None or node.format_spec is not None:
        raise ConfigError(
            f"dataset.prompts.official_dir: {path}: {what} inserts {{{ast.unparse(node.value)}}}, which we cannot "
            f"fill (known: ques, question[{'|'.join(_QUESTION_KEYS)}], options[0..3])"
        )
    conversion = "" if node.conversion == -1 else f"!{chr(node.conversion)}"
    return f"{{{name}{conversion}}}"
