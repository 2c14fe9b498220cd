"""The ``where`` language of :class:`~memret.collection.Collection`: a small Mongo-like filter.

A filter is a dict. Plain ``{"field": value}`` pairs mean equality; several pairs are ANDed.
Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists`` on a field, ``$and $or $not`` above them::

    {"year": {"$gte": 2020}, "lang": "en"}
    {"$or": [{"lang": "en"}, {"tags.primary": {"$in": ["bio", "med"]}}]}

Fields are metadata keys; dots reach into nested objects. Values are compared within one type
bracket only, so results never depend on SQLite's cross-type ordering:

- numbers (int, float) compare with numbers, strings with strings (code-point order), booleans
  equal booleans (``True`` is not ``1``), ``None`` equals a JSON null or a missing field;
- ``$ne`` / ``$nin`` match documents whose field is missing or of another type (Mongo semantics);
- ``$gt``-family on a field of another type (or missing) is false.

:func:`compile_where` turns a filter into a parameterised SQL condition over a JSON column (nothing
from the filter is pasted into SQL). :func:`matches` is the same language evaluated in Python, the
brute-force reference the tests compare the SQL against.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

_FIELD = re.compile(r"^[^$.\"\\\x00-\x1f][^.\"\\\x00-\x1f]*(\.[^$.\"\\\x00-\x1f][^.\"\\\x00-\x1f]*)*$")
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", *_CMP}
_MAX_DEPTH = 32
_MISSING = object()
_ORDER = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
          "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


class FilterError(ValueError):
    """A ``where`` filter that is not valid; the message says what and where."""


def _check_field(field: Any) -> str:
    if not isinstance(field, str) or not _FIELD.match(field):
        raise FilterError(f"invalid field name {field!r}: use metadata keys (dots for nesting) without quotes, "
                          "backslashes or a leading '$'; operators are $and, $or, $not")
    return field


def _check_scalar(value: Any, where: str) -> Any:
    if isinstance(value, str):
        _check_text(value, where)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"{where}: {value!r} is not a finite number")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise FilterError(f"{where}: {value} does not fit in 64 bits")
        return value
    raise FilterError(f"{where}: value must be a string, number, bool or null, got {type(value).__name__}")


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"{where}: string {value!r} is not valid Unicode (lone surrogate)") from None


def _kind(value: Any) -> str:
    """The type bracket of a Python value: 'null', 'bool', 'num', 'str' or 'other'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    return "other"


_SQL_TYPES = {"null": "('null')", "bool": "('true','false')", "num": "('integer','real')", "str": "('text')"}


def validate(where: Mapping[str, Any] | None) -> None:
    """Raise :class:`FilterError` if ``where`` is malformed (compiling it does the same checks)."""
    compile_where(where)


def compile_where(where: Mapping[str, Any] | None, column: str = "metadata") -> tuple[str, list]:
    """Compile a filter to ``(sql, params)``, a condition over the JSON text column ``column``.

    Args:
        where: the filter (see the module docstring); ``None`` or ``{}`` matches everything.
        column: SQL expression holding each row's metadata as JSON text (trusted, not user input).

    Returns:
        A SQL boolean expression with ``?`` placeholders and its parameters.

    Raises:
        FilterError: unknown operator, bad field name, wrong operand type.
    """
    if where is None:
        return "1", []
    params: list = []
    sql = _compile_doc(where, column, params, 0)
    return sql, params


def _compile_doc(doc: Any, col: str, params: list, depth: int) -> str:
    if depth > _MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(doc, Mapping):
        raise FilterError(f"a filter must be an object (dict), got {type(doc).__name__}")
    parts = []
    for key, value in doc.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters")
            subs = [_compile_doc(v, col, params, depth + 1) for v in value]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(subs) + ")")
        elif key == "$not":
            parts.append(f"NOT ({_compile_doc(value, col, params, depth + 1)})")
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(f"unknown top-level operator {key!r}; known: $and, $or, $not")
        else:
            parts.append(_compile_field(_check_field(key), value, col, params))
    return "(" + " AND ".join(parts) + ")" if parts else "1"


def _path(field: str) -> str:
    return "$" + "".join(f'."{seg}"' for seg in field.split("."))


def _compile_field(field: str, cond: Any, col: str, params: list) -> str:
    if isinstance(cond, Mapping) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        ops = cond
    elif isinstance(cond, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        raise FilterError(f"field {field!r}: do not mix operators and plain keys in one object")
    else:
        ops = {"$eq": cond}
    path = _path(field)
    parts = []
    for op, arg in ops.items():
        if op not in _FIELD_OPS:
            raise FilterError(f"field {field!r}: unknown operator {op!r}; known: {sorted(_FIELD_OPS)}")
        # coalesce: a missing field makes json_type/json_extract NULL, and NOT NULL is NULL in SQL's
        # three-valued logic; every leaf must be plainly true or false for $not / $ne to be right.
        parts.append(f"coalesce({_compile_op(field, op, arg, col, path, params)}, 0)")
    return "(" + " AND ".join(parts) + ")"


def _eq_sql(value: Any, col: str, path: str, params: list) -> str:
    """SQL for 'the field equals value', type-bracketed."""
    kind = _kind(value)
    if kind == "null":
        params.append(path)
        return f"(json_extract({col}, ?) IS NULL)"
    if kind == "bool":
        params.append(path)
        return f"(json_type({col}, ?) = '{'true' if value else 'false'}')"
    params.extend([path, path, value])
    return f"(json_type({col}, ?) IN {_SQL_TYPES[kind]} AND json_extract({col}, ?) = ?)"


def _compile_op(field: str, op: str, arg: Any, col: str, path: str, params: list) -> str:
    where = f"field {field!r} {op}"
    if op == "$exists":
        if not isinstance(arg, bool):
            raise FilterError(f"{where}: takes true or false")
        params.append(path)
        return f"(json_type({col}, ?) IS {'NOT ' if arg else ''}NULL)"
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)):
            raise FilterError(f"{where}: takes a list of values")
        subs = [_eq_sql(_check_scalar(v, where), col, path, params) for v in arg]
        any_sql = "(" + " OR ".join(f"coalesce({x}, 0)" for x in subs) + ")" if subs else "0"
        return any_sql if op == "$in" else f"(NOT {any_sql})"
    value = _check_scalar(arg, where)
    if op == "$eq":
        return _eq_sql(value, col, path, params)
    if op == "$ne":
        return f"(NOT coalesce({_eq_sql(value, col, path, params)}, 0))"
    kind = _kind(value)
    if kind not in ("num", "str"):
        raise FilterError(f"{where}: compares numbers or strings, got {value!r}")
    params.extend([path, path, value])
    return f"(json_type({col}, ?) IN {_SQL_TYPES[kind]} AND json_extract({col}, ?) {_CMP[op]} ?)"


# ---------------------------------------------------------------------- the Python reference
def _get(meta: Mapping[str, Any], field: str) -> Any:
    cur: Any = meta
    for seg in field.split("."):
        if not isinstance(cur, Mapping) or seg not in cur:
            return _MISSING
        cur = cur[seg]
    return cur


def _eq(x: Any, value: Any) -> bool:
    if value is None:
        return x is None or x is _MISSING
    kx, kv = _kind(x), _kind(value)
    return kx == kv and x == value


def matches(where: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> bool:
    """Evaluate ``where`` on one metadata dict in Python (the reference for :func:`compile_where`)."""
    if where is None:
        return True
    validate(where)
    return _match_doc(where, meta)


def _match_doc(doc: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    for key, value in doc.items():
        if key == "$and":
            ok = all(_match_doc(v, meta) for v in value)
        elif key == "$or":
            ok = any(_match_doc(v, meta) for v in value)
        elif key == "$not":
            ok = not _match_doc(value, meta)
        else:
            ok = _match_field(_get(meta, key), value)
        if not ok:
            return False
    return True


def _match_field(x: Any, cond: Any) -> bool:
    ops = cond if isinstance(cond, Mapping) and cond and all(str(k).startswith("$") for k in cond) else {"$eq": cond}
    for op, arg in ops.items():
        if op == "$exists":
            ok = (x is not _MISSING) == arg  # Mongo: a field set to null exists
        elif op == "$eq":
            ok = _eq(x, arg)
        elif op == "$ne":
            ok = not _eq(x, arg)
        elif op == "$in":
            ok = any(_eq(x, v) for v in arg)
        elif op == "$nin":
            ok = not any(_eq(x, v) for v in arg)
        else:
            ok = _kind(x) == _kind(arg) and _ORDER[op](x, arg)
        if not ok:
            return False
    return True
