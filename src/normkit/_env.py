"""Environment variables that normkit reads on every call, read cheaply.

``NORMKIT_BACKEND``, ``NORMKIT_NUM_THREADS`` and ``NORMKIT_CPU_POOL`` are looked up on
every layer or kernel call, so that setting one takes effect at once. ``os.environ.get``
costs about 1 us per lookup on the CI machine (more inside a busy call path): it encodes
the key and, when the variable is unset (the usual case), raises and catches a KeyError.
:func:`reader` instead looks the pre-encoded key up in the dict that ``os.environ`` keeps
in step with itself (``os.environ._data``, CPython's store behind the mapping: every
assignment or deletion made through ``os.environ`` shows there, exactly as
``os.environ.get`` would see it). Where that private layout differs, the reader falls back
to ``os.environ.get``.

This module imports only the standard library.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

__all__ = ["reader"]


def reader(name: str) -> Callable[[], Optional[str]]:
    """A function returning ``$name`` now (None when unset)."""
    environ = os.environ
    try:
        data, key, decode = environ._data, environ.encodekey(name), environ.decodevalue
        if not isinstance(data, dict):
            raise TypeError(type(data).__name__)
    except (AttributeError, TypeError):
        return lambda: environ.get(name)

    def read() -> Optional[str]:
        value = data.get(key)
        return None if value is None else decode(value)

    return read
