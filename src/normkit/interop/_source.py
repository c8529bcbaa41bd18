"""Read a model description given as a path or as the text itself."""

from __future__ import annotations

import os
from typing import Tuple


def read_text(source, *, what: str, markers: str = "{:\n") -> Tuple[str, str]:
    """Return ``(text, origin)`` for ``source`` (a path or the text itself).

    A ``str`` naming an existing file is read; otherwise a ``str`` containing any of
    ``markers`` is taken as the text. Anything else raises, naming what was expected.
    """
    if isinstance(source, (bytes, bytearray)):
        raise TypeError(
            f"{what}: got bytes; pass a path or the text (decode with .decode('utf-8'))"
        )
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
        with open(source, encoding="utf-8") as fh:
            return fh.read(), source
    if not isinstance(source, str):
        raise TypeError(f"{what}: expected a path or the text itself, got {type(source).__name__}")
    if "\n" not in source and len(source) < 4096 and os.path.isfile(source):
        with open(source, encoding="utf-8") as fh:
            return fh.read(), source
    if any(m in source for m in markers) or not source.strip():
        return source, "<text>"
    raise FileNotFoundError(
        f"{what}: {source!r} is not an existing file and does not look like "
        "model text; pass a path to an existing file or the text itself"
    )
