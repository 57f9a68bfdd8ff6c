"""CogStream's official scoring: five 0-10 judge rubrics per answer and the aggregation of step1b.

Dimensions (evaluate/eval_metrics/eval_{1_IA,2_DC,3_CA,4_TP,5_LC}.py): Informational Accuracy, Detail
Completeness, Context Awareness, Temporal Precision, Logical Consistency. DC, CA, TP and LC also see the
ground-truth earlier QAs the question relies on (its `relevance` vector).

Our interpretation, labelled wherever it is reported: every QA is judged on its own on all five dimensions.
The released scripts batch IA by five and never score a trailing partial batch, keep only the last digit of a
`PredA<n>` key, and stop DC after four QAs of a sequence; we reproduce none of that. A score is read from the
`"PredA<n>": <number>` pair of the QA's own label (or the only such pair), through int(float()) as the scripts
do, and must lie in 0..10; anything else is a failed dimension, never guessed. `official_table` aggregates as
`evaluate/analysis/step1b_statistic_score.py`: per QA the mean of its readable dimensions; capability score =
10 x the mean over QAs of that label; dimension score = 10 x its mean over QAs; Avg = mean of the five.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean

from harness.benchmarks.judge_prompts import JudgeTemplate, Piece, read_assignments
from harness.benchmarks.official import OfficialTable
from harness.judge import JudgePrompt, Verdict
from harness.records import ResultRecord

DIMENSIONS = ("IA", "DC", "CA", "TP", "LC")
OFFICIAL_FILES = {
    "IA": "eval_1_IA.py", "DC": "eval_2_DC.py", "CA": "eval_3_CA.py", "TP": "eval_4_TP.py", "LC": "eval_5_LC.py",
}  # fmt: skip
OFFICIAL_FOLDER = "evaluate/eval_metrics"
JUDGE_FIELDS = ("questions", "answers", "preds", "coi_qas")  # the official scripts' variable names

# label -> capability code, merged as step1b merges them. The 11 paper columns in order (two of them are
# "Obj.": Basic/Items is Obj, Streaming/Object Tracking is ObjTrack), then Env (a Basic label with no paper
# column) and TempP (Temporal Perception, which step1b leaves out of every score: asked, judged, not tabled).
CAPABILITIES = {
    "Basic/Attributes": "Att", "Basic/Items": "Obj", "Basic/Co-reference": "CoRef", "Basic/Actions": "Act",
    "Streaming/Reasoning": "Rea", "Streaming/Analysis": "Rea", "Streaming/Causality": "Rea",
    "Streaming/Causal Discovery": "Rea", "Streaming/Causal discovery": "Rea",
    "Streaming/Ingredients Analysis": "Rea", "Streaming/Intention": "Rea", "Streaming/Prediction": "Rea",
    "Streaming/Sequence Perception": "Seq", "Streaming/Dialogue Recalling": "Dial",
    "Streaming/Dynamic Updating": "Dyn", "Streaming/Object Tracking": "ObjTrack",
    "Global/Overall Summary": "Over", "Global/Global Analysis": "Glob",
    "Basic/Environment": "Env", "Streaming/Temporal Perception": "TempP",
}  # fmt: skip
TASKS = ("Att", "Obj", "CoRef", "Act", "Rea", "Seq", "Dial", "Dyn", "ObjTrack", "Over", "Glob", "Env", "TempP")
UNTABLED = ("TempP",)  # step1b's INVALID_LABEL
INTERPRETATION = (
    "our interpretation of the released scripts: every QA judged on its own on all five dimensions (no IA "
    "batches of 5 with the trailing QAs dropped, no last-digit keys, no DC stop after 4 QAs)"
)

_RUBRICS = {
    "IA": (
        "Informational Accuracy",
        "Does the predicted answer carry the information of the correct answer, so that it answers the question?",
        ("wrong, or contradicts the correct answer; does not answer the question",
         "a little is right, but with serious errors or invented content; mostly does not answer",
         "the key information is right, with errors, gaps or vagueness; answers in part",
         "right on the main points, with small errors or omissions; answers the question",
         "matches the correct answer with every key element; answers fully"),
    ),
    "DC": (
        "Detail Completeness",
        "Does the predicted answer keep to what the video shows and cover its details, without irrelevant or wrong "
        "common-sense inferences?",
        ("unrelated to the video, full of irrelevant or wrong inferences; does not match the correct answer",
         "few video details, incomplete, several irrelevant or wrong inferences",
         "some video details, but leans on common-sense guesses that drift from the video",
         "nearly all video details, a few missing; inferences agree with the video",
         "matches the correct answer with every needed detail and no irrelevant inference"),
    ),
    "CA": (
        "Context Awareness",
        "Does the predicted answer use the context of the earlier dialogue that the correct answer relies on, "
        "without contradicting it?",
        ("ignores the earlier context; unrelated information",
         "little of the context; key elements missing, or irrelevant or wrong content",
         "the needed context roughly, with redundant or irrelevant details",
         "the key context elements, used properly",
         "all relevant context, fully used to answer the question"),
    ),
    "TP": (
        "Temporal Precision",
        "Does the predicted answer pick the event the question is about and place it correctly in time?",
        ("the wrong event, the wrong context, timing far off",
         "partly the right event, with irrelevant or wrong information and serious timing errors",
         "the main event, but key details missing and vague timing or order",
         "the right event with consistent timing and order; small non-essential gaps",
         "exactly the right event with precise timing (timestamps or order)"),
    ),
    "LC": (
        "Logical Consistency",
        "Is the reasoning of the predicted answer consistent with the correct answer and free of contradictions?",
        ("illogical; contradicts the question or the correct answer",
         "confused, with major fallacies or contradictory cause and effect",
         "partly in line with the correct answer, with some faulty reasoning",
         "consistent with the correct answer and sound, with small differences",
         "fully consistent with the correct answer and rigorous"),
    ),
}  # fmt: skip
_BANDS = ("0-1", "2-3", "4-6", "7-8", "9-10")
_CONTEXT = Piece("- Earlier dialogue this question relies on (ground truth):{coi_qas}\n", optional=True)
_QA = Piece(
    "- Question:{questions}\n- Correct answer:{answers}\n- Predicted answer:{preds}\n\n"
    "### How to judge\n"
    "1. Understand the question and what it asks for.\n"
    "2. Judge only from the question, the correct answer and the context given here, not from outside knowledge.\n"
    "3. Compare the prediction with the correct answer point by point.\n\n"
    "### Output\n"
    "Reply with only a Python dict that maps the predicted answer's label to an integer score from 0 to 10, "
    'for example {{"PredA1": 7}}.'
)
_PAIR = re.compile(r"""["']?(\w+)["']?\s*:\s*["']?(-?\d+\.?\d*)""")  # key: number, as the scripts' regex


def own_templates() -> dict[str, JudgeTemplate]:
    """Our wording of the five rubrics, in the structure of the official prompts."""
    templates = {}
    for dim, (title, task, bands) in _RUBRICS.items():
        rubric = "\n".join(f"- {band}: {text}." for band, text in zip(_BANDS, bands, strict=True))
        system = f"You evaluate answers of a video question-answering system for **{title}**.\n{task}\n" + (
            f"Score on a 0-10 scale:\n{rubric}"
        )
        head = Piece("### Input\n")
        templates[dim] = JudgeTemplate(system, (head, _QA) if dim == "IA" else (head, _CONTEXT, _QA))
    return templates


def official_templates(official_dir: str) -> dict[str, JudgeTemplate]:
    """The five official prompts (`prompt1` system, `prompt2` user), read with `ast` from a checkout."""
    folder = Path(official_dir) / OFFICIAL_FOLDER
    return {
        dim: read_assignments(folder / name, "prompt1", "prompt2", JUDGE_FIELDS) for dim, name in OFFICIAL_FILES.items()
    }


def judge_prompts(
    templates: Mapping[str, JudgeTemplate], index: int, question: str, answer: str, response: str,
    related: Sequence[tuple[str, str]],
) -> list[JudgePrompt]:  # fmt: skip
    """One prompt per dimension for QA `index` of its sequence; `related`: the earlier (question, answer) it needs."""
    values = {
        "questions": f"\nQ{index}: {question}",
        "answers": f"\nA{index}: {answer}",
        "preds": f"\nPredA{index}: {response}",
        "coi_qas": "".join(f"\nQA{n}: {q} {a}" for n, (q, a) in enumerate(related, start=1)),
    }
    prompts = []
    for dim in DIMENSIONS:
        system, user = templates[dim].render(**values)
        prompts.append(JudgePrompt(dim, user, system))
    return prompts


def read_score(text: str | None, index: int) -> int | None:
    """The 0-10 score of QA `index` in a judge output; None when it cannot be read."""
    if text is None:
        return None
    pairs = _PAIR.findall(text)
    own = [value for key, value in pairs if key == f"PredA{index}"]
    values = own[-1:] or ([pairs[0][1]] if len(pairs) == 1 else [])
    if not values:
        return None
    number = float(values[0])
    return int(number) if 0 <= number <= 10 else None


def verdict(outputs: Mapping[str, str | None], index: int) -> Verdict:
    """Score = mean of the readable dimensions / 10; subscores per dimension (0-10); failed: the unreadable."""
    scores = {dim: read_score(outputs.get(dim), index) for dim in DIMENSIONS}
    readable = {dim: float(s) for dim, s in scores.items() if s is not None}
    failed = tuple(dim for dim, s in scores.items() if s is None)
    return Verdict(fmean(readable.values()) / 10 if readable else 0.0, readable, failed)


def official_table(records: Iterable[ResultRecord]) -> OfficialTable:
    """Capability scores (0-100) per code, the five dimension scores, and Avg, as step1b aggregates them."""
    records = list(records)
    scored = [r for r in records if not r.has_error and any(d in r.subscores for d in DIMENSIONS)]
    tabled = [r for r in scored if r.task not in UNTABLED]
    means = {r.query_id: fmean(r.subscores[d] for d in DIMENSIONS if d in r.subscores) for r in tabled}
    tasks, counts = {}, {}
    for code in (c for c in TASKS if c not in UNTABLED):
        mine = [means[r.query_id] for r in tabled if r.task == code]
        if mine:
            tasks[code], counts[code] = 10 * fmean(mine), len(mine)
    dimensions = {}
    for dim in DIMENSIONS:
        values = [r.subscores[dim] for r in tabled if dim in r.subscores]
        if values:
            dimensions[dim] = 10 * fmean(values)
    overall = fmean(dimensions.values()) if dimensions else 0.0
    unread = len(records) - len(scored) - sum(r.has_error for r in records)
    partial = sum(1 for r in tabled if any(d not in r.subscores for d in DIMENSIONS))
    notes = (
        INTERPRETATION,
        "scores on 0-100 (10 x the 0-10 judge scale); the five dimension rows are 10 x their mean over QAs and "
        "overall (Avg) is their mean; a capability is 10 x the mean of its QAs' per-QA means",
        f"{partial} QAs had some dimensions unreadable (their mean uses the readable ones); {unread} QAs with no "
        f"readable dimension and {sum(r.has_error for r in records)} unanswered (errors) are left out",
        f"{sum(r.task in UNTABLED for r in scored)} Temporal Perception QAs (TempP) are left out, as step1b does; "
        "Env (Basic/Environment) has no column in the paper's table",
    )
    return OfficialTable("cogstream", tasks, dimensions, overall, counts, notes)
