"""Reading the JSON files of a run folder, checked where they enter.

Every run-folder JSON file (``config.json``, ``metrics.json``, ``sim.json``,
``hw/memories.json``, build reports) is read through :func:`read_json`: a
size limit before reading, UTF-8, valid JSON, no excessive nesting, a JSON
object at the top.  :func:`need` checks one field's type and range.  Every
defect is a :class:`FileError` (exit status 2) naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from spikeforge.errors import SpikeforgeError

#: Largest run-folder JSON file read (the biggest written, metrics.json with a
#: long history, is a few kB).
MAX_JSON_BYTES = 16 << 20


class FileError(SpikeforgeError, ValueError):
    """A run-folder file that is unreadable, malformed or holds wrong values."""


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not read as a file, checked before it is opened: a
    named pipe or a socket (whose open or read would wait for a writer), or
    None (a regular file, a device, a directory or a missing path: the open
    and the size limit say what is wrong with those)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return None


def read_json(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES) -> dict:
    """The JSON object in ``path`` (module docstring for the checks)."""
    path = Path(path)
    why = not_a_file(path)
    if why:
        raise FileError(f"{path}: {why}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise FileError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise FileError(f"{path}: larger than {limit} bytes: not a spikeforge file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        value = json.loads(text)
    except ValueError as e:   # JSONDecodeError, and an integer of too many digits
        raise FileError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise FileError(f"{path}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise FileError(f"{path}: expected a JSON object, not {_kind(value)}")
    return value


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def is_number(v: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return type(v) is int


# checks for :func:`need`: (description, predicate)
NUMBER = ("a finite number", is_number)
NONNEG = ("a non-negative number", lambda v: is_number(v) and v >= 0)
POSITIVE = ("a positive number", lambda v: is_number(v) and v > 0)
FRACTION = ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1)
COUNT = ("a non-negative integer", lambda v: is_int(v) and v >= 0)
POSITIVE_INT = ("a positive integer", lambda v: is_int(v) and v >= 1)
STRING = ("a string", lambda v: isinstance(v, str))
OBJECT = ("an object", lambda v: isinstance(v, dict))
NUMBERS = ("a list of finite numbers", lambda v: isinstance(v, list) and all(map(is_number, v)))
POSITIVE_INTS = ("a non-empty list of positive integers",
                 lambda v: isinstance(v, list) and bool(v)
                 and all(is_int(x) and x >= 1 for x in v))
COUNTS = ("a list of non-negative integers",
          lambda v: isinstance(v, list) and all(is_int(x) and x >= 0 for x in v))


def need(d: dict, key: str, check: tuple[str, Callable[[Any], bool]], where: str, *,
         optional: bool = False) -> Any:
    """``d[key]``, checked by ``check`` (``optional``: missing or null is None)."""
    if key not in d or d[key] is None:
        if optional:
            return None
        raise FileError(f"{where}: missing field {key!r}")
    desc, ok = check
    v = d[key]
    if not ok(v):
        shown = json.dumps(v)[:40] if not isinstance(v, float) else repr(v)
        raise FileError(f"{where}: field {key!r} must be {desc}, not {shown}")
    return v
