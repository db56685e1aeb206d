"""Split a SQL file into statements, the way psql would for plain SQL: semicolons outside
quotes, quoted identifiers, dollar-quoted bodies and comments end a statement. Each statement
keeps the line it starts on, for "statement 3 (line 12) of 20261120000000_x.sql failed"."""

from __future__ import annotations

import dataclasses
import re

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_LEADING_COMMENTS = re.compile(r"(?:\s*(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/))*\s*", re.S)


@dataclasses.dataclass(frozen=True)
class Statement:
    index: int  # 1-based
    line: int  # 1-based line where it starts
    sql: str

    @property
    def first_line(self) -> str:
        text = " ".join(self.sql.split())
        return text if len(text) <= 100 else text[:97] + "..."


def split(sql: str) -> list[Statement]:
    out: list[Statement] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    start_line = None
    line = 1

    def flush() -> None:
        nonlocal buf, start_line
        raw = "".join(buf)
        m = _LEADING_COMMENTS.match(raw)
        assert m is not None  # the pattern matches the empty string
        text = raw[m.end():].strip()
        if text:
            first = len(raw) - len(raw.lstrip())  # where start_line was counted from
            out.append(Statement(len(out) + 1, (start_line or line) + raw[first:m.end()].count("\n"), text))
        buf = []
        start_line = None

    while i < n:
        c = sql[i]
        if start_line is None and not c.isspace():
            start_line = line
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            buf.append(sql[i:j])
            i = j
            continue
        if c == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            chunk = sql[i:j]
            line += chunk.count("\n")
            buf.append(chunk)
            i = j
            continue
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            chunk = sql[i:j + 1]
            line += chunk.count("\n")
            buf.append(chunk)
            i = j + 1
            continue
        if c == "$":
            m = _DOLLAR.match(sql, i)
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                tag = m.group(0)
                j = sql.find(tag, m.end())
                j = n if j < 0 else j + len(tag)
                chunk = sql[i:j]
                line += chunk.count("\n")
                buf.append(chunk)
                i = j
                continue
        if c == ";":
            flush()
            i += 1
            continue
        if c == "\n":
            line += 1
        buf.append(c)
        i += 1
    flush()
    return out

