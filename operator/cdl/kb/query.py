"""The knowledge base's query language, compiled to parameterised SQL.

    epochs > 10 && optimizer = Adam && accuracy > 0.9
    (state = completed || state = active) && hp.lr <= 0.01 && name ~ bert

A query is comparisons joined by `&&` / `||` (also `and` / `or`) with parentheses. A field is a
known column of the table, or a dotted name looked up in the table's JSON documents (for a trial:
its hyperparameters, best metrics and model metadata, in that order; `hp.`, `metric.` and `meta.`
pick one). Operators: = != > >= < <= and ~ (contains, case-insensitive). A value is a number, a
bare word or a quoted string; numbers compare as numbers, anything else as text.

Field names and values only ever travel as query parameters; the SQL text comes from a fixed
set of fragments, so no query can change what the statement does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from cdl.errors import CdlError

OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "~")
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op>&&|\|\||>=|<=|!=|==|=|>|<|~|\(|\))
    | "(?P<dq>(?:[^"\\]|\\.)*)"
    | '(?P<sq>(?:[^'\\]|\\.)*)'
    | (?P<word>[A-Za-z0-9_.:/@+\-]+)
    )""", re.VERBOSE)
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
MAX_LENGTH = 2000


class QueryError(CdlError):
    """A query that does not parse; the message says where and what was expected."""


@dataclass(frozen=True)
class Table:
    """What a query may name in one table: plain columns, and JSON documents searched by path.

    `columns` maps a field name to (column, numeric?); `documents` maps a prefix (`hp`) to a JSON
    path expression's root (a column and a fixed path in it), in lookup order for bare names.
    """

    columns: dict[str, tuple[str, bool]]
    documents: tuple[tuple[str, str, tuple[str, ...]], ...]
    defaults: dict[str, str] = field(default_factory=dict)  # alias -> column name

    def fields(self) -> list[str]:
        return sorted(self.columns) + [f"{prefix}.NAME" for prefix, _, _ in self.documents]


TRIALS = Table(
    columns={
        "trial": ("trial_id", False), "state": ("state", False), "stop_reason": ("stop_reason", False),
        "wall_seconds": ("wall_seconds", True), "cpu_seconds": ("cpu_seconds", True),
        "peak_rss_bytes": ("peak_rss_bytes", True), "gpu_utilization": ("gpu_utilization", True),
        "best_metric": ("best_metric", True), "checkpoint": ("checkpoint_uuid", False),
    },
    documents=(("hp", "hparams", ()), ("metric", "metadata", ("best_metrics",)),
               ("model", "metadata", ("model",)), ("meta", "metadata", ())),
)
MODEL_VERSIONS = Table(
    columns={
        "model": ("model", False), "version": ("version", True), "namespace": ("namespace", False),
        "name": ("resource", False), "stage": ("stage", False), "passed": ("passed", False),
        "format": ("artifact_format", False), "bytes": ("artifact_bytes", True),
    },
    documents=(("metric", "metrics", ()), ("lineage", "lineage", ())),
)


@dataclass
class _Parser:
    text: str
    table: Table
    tokens: list[tuple[str, str, int]] = field(default_factory=list)
    pos: int = 0
    params: list[Any] = field(default_factory=list)

    def tokenize(self) -> None:
        i = 0
        text = self.text
        while i < len(text):
            if text[i:].strip() == "":
                break
            m = _TOKEN.match(text, i)
            if not m or m.end() == i:
                raise QueryError(f"query: unexpected {text[i:].strip()[:20]!r} at character {i + 1}")
            start = m.start(m.lastgroup or 0)
            if m.group("op"):
                self.tokens.append(("op", m.group("op"), start))
            elif m.group("dq") is not None or m.group("sq") is not None:
                raw = m.group("dq") if m.group("dq") is not None else m.group("sq")
                self.tokens.append(("str", re.sub(r"\\(.)", r"\1", raw), start))
            else:
                word = m.group("word")
                low = word.lower()
                if low in ("and", "or"):
                    self.tokens.append(("op", "&&" if low == "and" else "||", start))
                else:
                    self.tokens.append(("word", word, start))
            i = m.end()

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise QueryError("query: ends too early; expected a field, an operator or a value")
        self.pos += 1
        return tok

    def parse(self) -> sql.Composable:
        self.tokenize()
        if not self.tokens:
            raise QueryError("query is empty")
        expr = self.disjunction()
        extra = self.peek()
        if extra is not None:
            raise QueryError(f"query: unexpected {extra[1]!r} at character {extra[2] + 1}; expected && or ||")
        return expr

    def disjunction(self) -> sql.Composable:
        parts = [self.conjunction()]
        while (tok := self.peek()) is not None and tok[:2] == ("op", "||"):
            self.pos += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" OR ").join(parts))

    def conjunction(self) -> sql.Composable:
        parts = [self.term()]
        while (tok := self.peek()) is not None and tok[:2] == ("op", "&&"):
            self.pos += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" AND ").join(parts))

    def term(self) -> sql.Composable:
        kind, value, at = self.take()
        if (kind, value) == ("op", "("):
            inner = self.disjunction()
            close = self.take()
            if close[:2] != ("op", ")"):
                raise QueryError(f"query: expected ')' at character {close[2] + 1}, found {close[1]!r}")
            return inner
        if kind != "word" or not _FIELD.match(value):
            raise QueryError(f"query: expected a field name at character {at + 1}, found {value!r}")
        op_kind, op, op_at = self.take()
        if op_kind != "op" or op not in (*OPERATORS, "=="):
            raise QueryError(f"query: expected one of {' '.join(OPERATORS)} after {value!r} at character "
                             f"{op_at + 1}, found {op!r}")
        op = "=" if op == "==" else op
        v_kind, literal, v_at = self.take()
        if v_kind == "op":
            raise QueryError(f"query: expected a value after {value} {op} at character {v_at + 1}, found {literal!r}")
        numeric = v_kind == "word" and bool(_NUMBER.match(literal))
        return self.comparison(value, op, literal, numeric)

    def comparison(self, name: str, op: str, literal: str, numeric: bool) -> sql.Composable:
        column = self.table.columns.get(name)
        if column is not None:
            col, col_numeric = column
            ident = sql.Identifier(col)
            if numeric and col_numeric:
                target: sql.Composable = ident
            elif numeric:
                target = _number(lambda: sql.SQL("{}::text").format(ident))
            else:
                target = sql.SQL("{}::text").format(ident)
        elif numeric:
            target = _number(lambda: self.document_value(name))
        else:
            target = self.document_value(name)
        if op == "~":
            self.params.append(f"%{_escape_like(literal)}%")
            return sql.SQL("({}::text ILIKE %s)").format(target)
        self.params.append(float(literal) if numeric else literal)
        return sql.SQL("({} {} %s)").format(target, sql.SQL(op))

    def document_value(self, name: str) -> sql.Composable:
        """The text at a dotted path in the table's JSON documents (NULL when absent)."""
        prefix, _, rest = name.partition(".")
        docs = [d for d in self.table.documents if d[0] == prefix and rest]
        path = rest.split(".") if docs else name.split(".")
        if not docs:
            docs = list(self.table.documents)
        lookups = []
        for _, column, root in docs:
            self.params.append([*root, *path])
            lookups.append(sql.SQL("({} #>> %s)").format(sql.Identifier(column)))
        return lookups[0] if len(lookups) == 1 else sql.SQL("coalesce({})").format(sql.SQL(", ").join(lookups))


# Text to a number, or NULL when it is not one (so `accuracy > 0.9` skips a trial whose accuracy
# is missing or a word instead of failing the statement). The value is built twice (its
# parameters are appended twice, in order).
_NUMERIC_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


def _number(build: Any) -> sql.Composable:
    first = build()
    second = build()
    return sql.SQL("(CASE WHEN {} ~ {} THEN ({})::double precision END)").format(
        first, sql.Literal(_NUMERIC_TEXT), second)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_query(text: str | None, table: Table) -> tuple[sql.Composable, list[Any]]:
    """(WHERE condition, parameters) for a query over `table`; an empty query matches everything."""
    if text is None or not text.strip():
        return sql.SQL("TRUE"), []
    if len(text) > MAX_LENGTH:
        raise QueryError(f"query: {len(text)} characters; at most {MAX_LENGTH}")
    parser = _Parser(text, table)
    condition = parser.parse()
    return condition, parser.params
