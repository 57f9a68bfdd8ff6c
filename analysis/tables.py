"""One table model, three renderings: Markdown, LaTeX (booktabs) and CSV.

The best value of each ranked column is bold and the second underlined (Markdown: **x** and <u>x</u>),
ranked within blocks of rows (an ablation ranks each context separately). Ties share the mark. CSV carries
the numbers only. Output is a pure function of the table, so the same records give the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class Column:
    name: str
    group: str = ""  # header spanning the columns of one group (e.g. the dataset)
    rank: str | None = None  # "high" or "low": which value is best; None: not ranked
    digits: int = 1
    numeric: bool = True  # right-aligned


@dataclass(frozen=True)
class Cell:
    value: float | None = None  # what ranking and CSV use
    text: str | None = None  # shown instead of the formatted value (e.g. "+2.1 [-0.4, 4.5]")
    mark: str = ""  # appended to the shown text (e.g. a dagger for an incomplete cell)


@dataclass(frozen=True)
class Row:
    labels: tuple[str, ...]
    cells: tuple[Cell, ...]
    block: str = ""  # rows of one block are ranked together
    section: str = ""  # LaTeX draws a rule where the section changes


@dataclass(frozen=True)
class Table:
    stub: tuple[str, ...]  # headers of the label columns
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    caption: str = ""
    label: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def render(table: Table, fmt: str) -> str:
    if fmt == "md":
        return markdown(table)
    if fmt == "latex":
        return latex(table)
    if fmt == "csv":
        return to_csv(table)
    raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")


def marks(table: Table) -> dict[tuple[int, int], str]:
    """(row, column) -> "best" or "second", per ranked column within each block of rows."""
    out: dict[tuple[int, int], str] = {}
    for c, column in enumerate(table.columns):
        if column.rank is None:
            continue
        blocks: dict[str, list[int]] = {}
        for r, row in enumerate(table.rows):
            blocks.setdefault(row.block, []).append(r)
        for members in blocks.values():
            values = {r: _rounded(table.rows[r].cells[c].value, column.digits) for r in members}
            distinct = sorted({v for v in values.values() if v is not None}, reverse=column.rank == "high")
            if len(distinct) < 2:  # one value, or all tied: nothing stands out
                continue
            for r, value in values.items():
                if value == distinct[0]:
                    out[(r, c)] = "best"
                elif value == distinct[1]:
                    out[(r, c)] = "second"
    return out


def markdown(table: Table) -> str:
    ranked = marks(table)
    grouped = len({c.group for c in table.columns}) > 1
    headers = [*table.stub, *(f"{c.group} {c.name}".strip() if grouped else c.name for c in table.columns)]
    body = []
    for r, row in enumerate(table.rows):
        cells = [_md_escape(x) for x in row.labels]
        for c, (cell, column) in enumerate(zip(row.cells, table.columns, strict=True)):
            text = _md_escape(_text(cell, column))
            mark = ranked.get((r, c))
            text = f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text
            cells.append(text + cell.mark)
        body.append(cells)
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    numeric = [False] * len(table.stub) + [c.numeric for c in table.columns]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else "-" * (w + 2) for w, n in zip(widths, numeric, strict=True))
    out = []
    if table.caption:
        out += [f"**{_md_escape(table.caption)}**" + (f" ({table.label})" if table.label else ""), ""]
    out += [line(headers), rule + "|", *(line(cells) for cells in body)]
    if table.notes:
        out += ["", *(f"{note}  " for note in table.notes[:-1]), table.notes[-1]]
    return "\n".join(out) + "\n"


def latex(table: Table) -> str:
    ranked = marks(table)
    spec = "l" * len(table.stub) + "".join("r" if c.numeric else "l" for c in table.columns)
    out = ["\\begin{table}[t]", "\\centering"]
    if table.caption:
        out.append(f"\\caption{{{_tex(table.caption)}}}")
    if table.label:
        out.append(f"\\label{{{table.label}}}")
    out += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    groups = _spans([c.group for c in table.columns])
    if any(name for name, _, _ in groups):
        first = len(table.stub) + 1
        heads = [""] * len(table.stub)
        rules = []
        for name, start, width in groups:
            heads.append(f"\\multicolumn{{{width}}}{{c}}{{{_tex(name)}}}" if width > 1 else _tex(name))
            if name:
                rules.append(f"\\cmidrule(lr){{{first + start}-{first + start + width - 1}}}")
        out += [" & ".join(heads) + " \\\\", " ".join(rules)]
    out.append(" & ".join([*map(_tex, table.stub), *(_tex(c.name) for c in table.columns)]) + " \\\\")
    out.append("\\midrule")
    previous = table.rows[0].section if table.rows else ""
    for r, row in enumerate(table.rows):
        if row.section != previous:
            out.append("\\midrule")
            previous = row.section
        cells = list(map(_tex, row.labels))
        for c, (cell, column) in enumerate(zip(row.cells, table.columns, strict=True)):
            text = _tex(_text(cell, column))
            mark = ranked.get((r, c))
            text = f"\\textbf{{{text}}}" if mark == "best" else f"\\underline{{{text}}}" if mark == "second" else text
            cells.append(text + ("$^\\dagger$" if cell.mark else ""))
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if table.notes:
        out += ["\\par\\smallskip", "{\\footnotesize " + " ".join(_tex(n) for n in table.notes) + "}"]
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    grouped = len({c.group for c in table.columns}) > 1
    writer.writerow([*table.stub, *(f"{c.group} {c.name}".strip() if grouped else c.name for c in table.columns)])
    for row in table.rows:
        values = [_csv_value(cell) for cell in row.cells]
        writer.writerow([*row.labels, *values])
    return buffer.getvalue()


def number(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _text(cell: Cell, column: Column) -> str:
    return cell.text if cell.text is not None else number(cell.value, column.digits)


def _rounded(value: float | None, digits: int) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def _csv_value(cell: Cell) -> str:
    if cell.value is None or (isinstance(cell.value, float) and math.isnan(cell.value)):
        return cell.text if cell.text not in (None, "-") else ""
    value = float(cell.value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _spans(groups: list[str]) -> list[tuple[str, int, int]]:
    """(name, first index, width) of each run of equal group names."""
    spans: list[tuple[str, int, int]] = []
    for i, name in enumerate(groups):
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], spans[-1][2] + 1)
        else:
            spans.append((name, i, 1))
    return spans


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
        "Δ": r"$\Delta$", "†": r"$^\dagger$", "×": r"$\times$"}  # fmt: skip


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def emit(text: str, output: Path | None) -> None:
    """A rendered table to `output` (its folder made), or to stdout."""
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
