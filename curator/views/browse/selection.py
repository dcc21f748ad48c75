"""A selection made with the mouse, as a ``--where`` predicate a command line can repeat.

HoloViews' linked selections describe what was brushed as a ``dim`` expression: a chain
of operations applied to a column (``(dim('proj_x') >= a) & (dim('proj_x') <= b) & …``
for a box, the same on one column for a histogram range, a polygon test for a lasso).
:func:`to_predicate` turns the comparisons and their ``&``/``|`` into SQL text that
:func:`curator.store.predicate.parse` accepts (the numbers in full precision, so the
predicate selects exactly the brushed rows), and returns None for what SQL cannot say
(a lasso): the app then offers the selection as ids only.
"""

from __future__ import annotations

import math
import operator

_COMPARE = {operator.ge: ">=", operator.gt: ">", operator.le: "<=", operator.lt: "<",
            operator.eq: "=", operator.ne: "<>"}
_FLIP = {">=": "<=", ">": "<", "<=": ">=", "<": ">", "=": "=", "<>": "<>"}
_JOIN = {operator.and_: "AND", operator.or_: "OR"}


def to_predicate(expr) -> str | None:
    """SQL text of a HoloViews selection expression, or None when it has a part SQL
    cannot say. ``None`` in (no selection) gives None."""
    if expr is None:
        return None
    try:
        return _convert(expr)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _convert(expr) -> str:
    base = getattr(expr, "dimension", None)
    ops = getattr(expr, "ops", None)
    if base is None or ops is None:
        raise _Unsupported
    text = _column(base)
    is_bool = False
    for op in ops:
        fn, args = op.get("fn"), op.get("args", ())
        if op.get("kwargs") or len(args) != 1:
            raise _Unsupported
        arg = args[0]
        if fn in _COMPARE and not is_bool:
            symbol = _COMPARE[fn] if not op.get("reverse") else _FLIP[_COMPARE[fn]]
            text = f"{text} {symbol} {_literal(arg)}"
            is_bool = True
        elif fn in _JOIN and is_bool:
            other = _convert(arg)
            text = f"({text}) {_JOIN[fn]} ({other})"
        else:
            raise _Unsupported
    if not is_bool:
        raise _Unsupported
    return text


def _column(base) -> str:
    if hasattr(base, "ops"):  # a nested expression as the base
        return f"({_convert(base)})"
    name = getattr(base, "name", base)
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise _Unsupported
    return name


def _literal(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        raise _Unsupported
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unsupported
        return repr(value)
    if isinstance(value, int):
        return str(value)
    raise _Unsupported
