"""A small reader for the protobuf text format (Caffe ``.prototxt``, TensorFlow ``.pbtxt``).

normkit reads LRN layers out of model descriptions without Caffe, TensorFlow or a
compiled ``.proto`` schema, so this parser knows nothing about message types: it
turns text into a tree of :class:`Message` objects (ordered, repeated fields kept)
and lets the caller interpret field names. Every value remembers its line, so a
caller can report "line 12: local_size must be odd".

Grammar accepted (the subset ``protobuf.text_format`` writes and people type)::

    message  := field*
    field    := NAME ':' scalar | NAME ':' '[' scalar (',' scalar)* ']'
              | NAME ':'? '{' message '}' | NAME ':'? '<' message '>'
    scalar   := STRING+ | NUMBER | IDENTIFIER       (STRINGs concatenate)

with ``#`` comments and optional ``,`` / ``;`` between fields. Anything else raises
``ValueError`` naming the line and column.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Iterator, List, Tuple, Union

__all__ = ["Message", "Scalar", "parse"]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>[-+]?[A-Za-z_][A-Za-z0-9_.]*|\[[A-Za-z_][A-Za-z0-9_./]*\])
  | (?P<punct>[:{}<>\[\],;])
""",
    re.VERBOSE,
)

_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "?": "?",
}


@dataclass(frozen=True)
class Scalar:
    """One scalar value as written: ``kind`` is ``"string"``, ``"number"`` or ``"ident"``."""

    kind: str
    text: str  # numbers/identifiers: as typed; strings: decoded
    line: int

    def as_float(self, what: str) -> float:
        """The value as a float (numbers and inf/nan identifiers)."""
        if self.kind == "number":
            try:
                if re.match(r"^[-+]?0[xX]", self.text):
                    return float(int(self.text, 16))
                return float(self.text.rstrip("fF"))
            except OverflowError:  # a hex literal past float range (float('1e999') is inf)
                raise ValueError(
                    f"line {self.line}: {what} = {self._shown()} is out of the "
                    f"float range (|x| <= {sys.float_info.max:.4g})"
                ) from None
            except ValueError:
                pass  # not a number after all: the message below
        if self.kind == "ident" and self.text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            return float(self.text.lower().replace("infinity", "inf"))
        raise ValueError(f"line {self.line}: {what} must be a number, got {self._shown()}")

    def as_int(self, what: str) -> int:
        """The value as an int (a float-looking value is rejected, as protobuf does)."""
        if self.kind == "number" and re.match(r"^[-+]?(0[xX][0-9a-fA-F]+|\d+)$", self.text):
            try:
                return int(self.text, 0) if re.match(r"^[-+]?0[xX]", self.text) else int(self.text)
            except ValueError:  # Python refuses decimal ints of more than 4300 digits
                raise ValueError(
                    f"line {self.line}: {what} = {self._shown()} has too many "
                    "digits to be an integer"
                ) from None
        raise ValueError(f"line {self.line}: {what} must be an integer, got {self._shown()}")

    def as_bool(self, what: str) -> bool:
        if self.kind in ("ident", "number") and self.text in ("true", "True", "t", "1"):
            return True
        if self.kind in ("ident", "number") and self.text in ("false", "False", "f", "0"):
            return False
        raise ValueError(f"line {self.line}: {what} must be true or false, got {self._shown()}")

    def _shown(self) -> str:
        text = repr(self.text) if self.kind == "string" else self.text
        # a hostile file can hold a megabyte-long value: keep the one-line error short
        return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


Value = Union[Scalar, "Message"]


@dataclass
class Message:
    """A parsed message: ``fields`` in file order, as ``(name, value)`` pairs."""

    line: int = 1
    fields: List[Tuple[str, Value]] = field(default_factory=list)

    def all(self, name: str) -> List[Value]:
        """Every value of field ``name`` (repeated fields), in order."""
        return [v for n, v in self.fields if n == name]

    def get(self, name: str):
        """The last value of ``name`` (protobuf's rule for a repeated singular field), or None."""
        values = self.all(name)
        return values[-1] if values else None

    def names(self) -> List[str]:
        return [n for n, _ in self.fields]

    def __iter__(self) -> Iterator[Tuple[str, Value]]:
        return iter(self.fields)


def _decode_string(raw: str, line: int) -> str:
    body = raw[1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        i += 1
        esc = body[i]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 1
        elif esc in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i:])
            out.append(chr(int(m.group(0), 8)))
            i += len(m.group(0))
        elif esc in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 1 :])
            if not m:
                raise ValueError(f"line {line}: bad \\x escape in string {raw}")
            out.append(chr(int(m.group(0), 16)))
            i += 1 + len(m.group(0))
        else:
            raise ValueError(f"line {line}: unknown escape \\{esc} in string {raw}")
    return "".join(out)


def _tokens(text: str):
    """Yield (kind, text, line, column); raise on a character no token starts with."""
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            col = pos - line_start + 1
            raise ValueError(
                f"line {line}, column {col}: unexpected character {text[pos]!r} in protobuf text"
            )
        kind = m.lastgroup
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind not in ("ws", "comment"):
            yield kind, m.group(kind), line, pos - line_start + 1
        pos = m.end()
    yield "eof", "", line, pos - line_start + 1


# the deepest nesting of messages accepted (protobuf's default recursion limit)
MAX_DEPTH = 100


class _Parser:
    def __init__(self, text: str):
        self.toks = list(_tokens(text))
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def take(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, tok, expected: str):
        kind, text, line, col = tok
        got = "end of file" if kind == "eof" else repr(text)
        return ValueError(f"line {line}, column {col}: expected {expected}, got {got}")

    def message(self, closer: str, line: int, depth: int = 0) -> Message:
        if depth > MAX_DEPTH:
            # iterating instead would only move the problem: every consumer of the tree
            # recurses; protobuf's own text parser stops at 100 levels too
            raise ValueError(
                f"line {line}: messages nested more than {MAX_DEPTH} levels deep; "
                "a model file never nests this deep, the file is corrupt or hostile"
            )
        msg = Message(line=line)
        while True:
            tok = self.peek()
            kind, text, tline, _ = tok
            if kind == "eof":
                if closer:
                    raise ValueError(
                        f"line {tline}: end of file inside the message opened on "
                        f"line {line} (missing {closer!r})"
                    )
                return msg
            if kind == "punct" and text == closer:
                self.take()
                return msg
            if kind == "punct" and text in ",;":
                self.take()
                continue
            if kind != "ident":
                raise self.error(tok, "a field name" + (f" or {closer!r}" if closer else ""))
            self.take()
            name = text
            nxt = self.peek()
            had_colon = nxt[:2] == ("punct", ":")
            if had_colon:
                self.take()
                nxt = self.peek()
            if nxt[0] == "punct" and nxt[1] in "{<":
                self.take()
                msg.fields.append(
                    (name, self.message("}" if nxt[1] == "{" else ">", nxt[2], depth + 1))
                )
            elif nxt[0] == "punct" and nxt[1] == "[":
                self.take()
                if self.peek()[:2] == ("punct", "]"):
                    self.take()
                    continue
                while True:
                    msg.fields.append((name, self.scalar(name)))
                    sep = self.take()
                    if sep[:2] == ("punct", "]"):
                        break
                    if sep[:2] != ("punct", ","):
                        raise self.error(sep, f"',' or ']' in the list of {name}")
            else:
                if not had_colon:
                    raise self.error(nxt, f"':' or '{{' after field name {name!r}")
                msg.fields.append((name, self.scalar(name)))

    def scalar(self, name: str) -> Scalar:
        tok = self.take()
        kind, text, line, _ = tok
        if kind == "string":
            parts = [_decode_string(text, line)]
            while self.peek()[0] == "string":  # adjacent strings concatenate
                parts.append(_decode_string(self.take()[1], line))
            return Scalar("string", "".join(parts), line)
        if kind in ("number", "ident"):
            if kind == "ident" and text.startswith("["):
                raise self.error(tok, f"a value for {name!r}")
            return Scalar(kind, text, line)
        raise self.error(tok, f"a value for {name!r}")


def parse(text: str) -> Message:
    """Parse protobuf text format into a :class:`Message` tree.

    Raises:
        ValueError: on malformed text, naming the line (and column).

    Example::

        >>> msg = parse('layer { name: "norm1" lrn_param { local_size: 5 } }')
        >>> msg.get("layer").get("lrn_param").get("local_size").as_int("local_size")
        5
    """
    if not isinstance(text, str):
        raise TypeError(
            f"protobuf text must be a str, got {type(text).__name__}; decode bytes "
            "with .decode('utf-8')"
        )
    return _Parser(text).message("", 1)
