"""KJNodes coordinate strings: Spline Editor ``coord_str`` and Points Editor point lists.

KJNodes' editors emit JSON lists of ``{"x": .., "y": ..}`` in canvas pixels (a list of such lists
for several splines), sometimes single-quoted. Parsed strictly here, once, for every stage that
reads them (SAM2 clicks, Image To Motion splines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from .errors import TTMInputError


def parse_spline_points(value: object, what: str = "spline") -> list[list[tuple[float, float]]]:
    """KJNodes SplineEditor output (or [x, y] pairs) -> one or more lists of points.

    Accepts a JSON string (KJNodes' single-quoted variant too) or an already parsed list:
    ``[{"x": 1, "y": 2}, ...]``, ``[[{"x":...}, ...], [...]]`` or ``[[x, y], ...]``.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise TTMInputError(what, "the spline string is empty", "connect a SplineEditor's coord_str output")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = json.loads(text.replace("'", '"'))
            except json.JSONDecodeError as err:
                raise TTMInputError(what, f"not valid JSON ({err.msg} at character {err.pos}) in {text[:80]!r}",
                                    "pass SplineEditor's coord_str, e.g. [{\"x\": 10, \"y\": 20}, ...]") from None

    def point(item: object, index: int) -> tuple[float, float]:
        if isinstance(item, Mapping) and "x" in item and "y" in item:
            return (_coord(item["x"], what, index), _coord(item["y"], what, index))
        if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
            return (_coord(item[0], what, index), _coord(item[1], what, index))
        raise TTMInputError(what, f"point {index} is {item!r}", "give points as {\"x\": .., \"y\": ..} or [x, y]")

    if not isinstance(value, list) or not value:
        raise TTMInputError(what, f"expected a non-empty list of points, got {str(value)[:80]!r}",
                            "pass SplineEditor's coord_str, e.g. [{\"x\": 10, \"y\": 20}, ...]")
    is_multi = all(isinstance(v, list) and v and not isinstance(v[0], (int, float)) for v in value)
    groups = value if is_multi else [value]
    return [[point(item, i) for i, item in enumerate(group)] for group in groups]


def _coord(value: object, what: str, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TTMInputError(what, f"point {index} has a coordinate {value!r}", "use numbers for x and y")
    return float(value)
