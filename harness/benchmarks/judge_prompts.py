"""Judge prompt templates: our own wording, or the official strings of a benchmark's judge script.

Official judge scripts build their prompts in Python: string literals, f-strings, `+=` under an `if`.
`read_messages` and `read_assignments` read those strings from the user's checkout with `ast` (the file is
parsed as text, never run). Each string becomes a `Piece`, a `str.format` template whose fields are the
script's own variable names (`{question}`, `{coi_qas}`); a piece the script adds under an `if` is optional:
it is kept only when every field it names has content, as the official condition keeps it.
"""

from __future__ import annotations

import ast
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.benchmarks.fields import parse_official_source
from harness.errors import ConfigError


@dataclass(frozen=True)
class Piece:
    """Part of a user prompt."""

    text: str  # a str.format template: fields by name, literal braces doubled
    optional: bool = False  # added under an `if` in the official script: kept only when its fields are non-empty

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name)


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge's system prompt and the pieces of its user prompt."""

    system: str
    user: tuple[Piece, ...]

    def render(self, **values: str) -> tuple[str, str]:
        """(system, user) with the fields filled; an optional piece with an empty field is left out."""
        parts = []
        for piece in self.user:
            if piece.optional and not all(values.get(name) for name in piece.fields):
                continue
            try:
                parts.append(piece.text.format(**values))
            except (KeyError, IndexError) as e:
                raise ConfigError(
                    f"dataset.prompts.official_dir: a judge template names a field we cannot fill: {e}"
                ) from None
        return self.system, "".join(parts)


def read_messages(path: Path, fields: Sequence[str]) -> JudgeTemplate:
    """The script's one `messages = [{"role": "system", ...}, {"role": "user", ...}]` literal."""
    tree = _parse(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _names(node.targets) == ["messages"] and isinstance(node.value, ast.List):
            roles = {}
            for element in node.value.elts:
                entry = _dict_entries(element)
                role = entry.get("role")
                if isinstance(role, ast.Constant) and "content" in entry:
                    roles[role.value] = entry["content"]
            if "system" in roles and "user" in roles:
                found.append(roles)
    if len(found) != 1:
        raise ConfigError(
            f"dataset.prompts.official_dir: {path}: expected one `messages` list with a system and a user entry, "
            f"found {len(found)}"
        )
    system = _piece(found[0]["system"], (), path)
    return JudgeTemplate(system.text.format(), (_piece(found[0]["user"], fields, path),))


def read_assignments(path: Path, system_var: str, user_var: str, fields: Sequence[str]) -> JudgeTemplate:
    """`<system_var> = '...'` and `<user_var> = f'...'` (then `+= ...`, optional under an `if`), in source order.

    A plain assignment starts the user prompt again, as it would when the script runs; the last one wins.
    """
    tree = _parse(path)
    system: str | None = None
    user: list[Piece] | None = None
    for statement, conditional in _statements(tree.body):
        if isinstance(statement, ast.Assign) and _names(statement.targets) == [system_var]:
            system = _piece(statement.value, (), path).text.format()
        elif isinstance(statement, ast.Assign) and _names(statement.targets) == [user_var]:
            user = [_piece(statement.value, fields, path, conditional)]
        elif (
            isinstance(statement, ast.AugAssign)
            and isinstance(statement.op, ast.Add)
            and _names([statement.target]) == [user_var]
        ):
            if user is None:
                raise ConfigError(
                    f"dataset.prompts.official_dir: {path}: line {statement.lineno}: {user_var} += before {user_var} ="
                )
            user.append(_piece(statement.value, fields, path, conditional))
    missing = [name for name, value in ((system_var, system), (user_var, user)) if value is None]
    if missing:
        raise ConfigError(f"dataset.prompts.official_dir: {path}: no string assignment to {', '.join(missing)}")
    return JudgeTemplate(system, tuple(user))  # type: ignore[arg-type]


def _parse(path: Path) -> ast.Module:
    return parse_official_source(path, "the benchmark's official repository")


def _piece(node: ast.expr, fields: Sequence[str], path: Path, optional: bool = False) -> Piece:
    """A string literal or an f-string whose fields are plain names of `fields`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return Piece(_escape(node.value), optional)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(_escape(value.value))
            elif (
                isinstance(value, ast.FormattedValue)
                and isinstance(value.value, ast.Name)
                and value.value.id in fields
                and value.conversion == -1
                and value.format_spec is None
            ):
                parts.append("{" + value.value.id + "}")
            else:
                shown = ast.unparse(value.value) if isinstance(value, ast.FormattedValue) else ast.unparse(value)
                raise ConfigError(
                    f"dataset.prompts.official_dir: {path}: line {node.lineno}: the f-string field {{{shown}}} is "
                    f"not one we can fill ({', '.join(fields) or 'no fields here'})"
                )
        return Piece("".join(parts), optional)
    raise ConfigError(
        f"dataset.prompts.official_dir: {path}: line {node.lineno}: expected a string literal or an f-string, "
        f"got `{ast.unparse(node)[:60]}`"
    )


def _statements(body: Sequence[ast.stmt], conditional: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement in source order, and whether it runs under an `if`."""
    for statement in body:
        yield statement, conditional
        nested = conditional or isinstance(statement, ast.If)
        for name in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(statement, name, ()), nested)
        for handler in getattr(statement, "handlers", ()):
            yield from _statements(handler.body, True)


def _names(targets: Sequence[ast.expr]) -> list[str]:
    return [t.id for t in targets if isinstance(t, ast.Name)] if len(targets) == 1 else []


def _dict_entries(node: ast.expr) -> dict[str, ast.expr]:
    if not isinstance(node, ast.Dict):
        return {}
    return {k.value: v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)}


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")
