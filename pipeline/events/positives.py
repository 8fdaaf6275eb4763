"""Which events are positive next-item targets for retrieval (the ``positives`` setting).

A rule is one of:

- ``all``: every event is a target (the default; what genrec did before rules existed);
- ``value<op><number>`` with op one of ``>=``, ``>``, ``<=``, ``<``, ``==``: the event's value
  (e.g. a MovieLens rating) compares so; an event without a value (NaN) is never positive;
- ``action:<a>,<b>,...``: the event's action is one of these names (``ACTION_CODES``) or int
  codes (0..``MAX_ACTION_CODE``).

Events that are not positive stay in the history as context; only the targets change.

>>> rule = parse_positives("value>=4")
>>> rule.mask(np.array([0, 0, 0]), np.array([4.5, 3.0, np.nan], np.float32)).tolist()
[True, False, False]
>>> parse_positives("action:click,5").mask(np.array([2, 1, 5]), np.full(3, np.nan)).tolist()
[True, False, True]
>>> parse_positives("all").is_all
True
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.events.schema import ACTION_CODES, MAX_ACTION_CODE

ALL = "all"
_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_VALUE_RULE = re.compile(r"^value\s*(>=|<=|==|>|<)\s*(\S+)$")
EXAMPLES = "'all', 'value>=4' or 'action:click,purchase' (action names or codes 0..255)"


@dataclass(frozen=True)
class PositiveRule:
    """A parsed rule; ``mask`` says which events are positive."""

    text: str
    actions: frozenset[int] | None = None  # action rule: the positive codes
    op: str | None = None  # value rule: the comparison and its threshold
    threshold: float = 0.0

    @property
    def is_all(self) -> bool:
        return self.actions is None and self.op is None

    def mask(self, actions: np.ndarray, values: np.ndarray) -> np.ndarray:
        """bool [n]: which of n events (their action codes and values) are positive."""
        if self.actions is not None:
            return np.isin(actions, np.fromiter(self.actions, np.int64))
        if self.op is not None:
            with np.errstate(invalid="ignore"):  # NaN (no value) compares False
                return np.asarray(_COMPARE[self.op](values, self.threshold), dtype=bool)
        return np.ones(len(actions), dtype=bool)


def parse_positives(text: str, setting: str | None = "positives") -> PositiveRule:
    """Parse a rule (module docstring); a bad one raises ValueError naming ``setting`` (None:
    the caller names it), what is wrong and what to write."""
    where = "" if setting is None else f"{setting}: "
    rule = str(text).strip()
    if rule == ALL:
        return PositiveRule(ALL)
    if rule.startswith("action:"):
        names = [n.strip() for n in rule[len("action:") :].split(",")]
        if not all(names):
            raise ValueError(f"{where}{text!r} names an empty action; write {EXAMPLES}")
        return PositiveRule(rule, actions=frozenset(_action_code(n, text, where) for n in names))
    match = _VALUE_RULE.match(rule)
    if match:
        try:
            threshold = float(match.group(2))
        except ValueError:
            raise ValueError(
                f"{where}{text!r} compares value with {match.group(2)!r}, which is not a "
                f"number; write e.g. 'value>=4'"
            ) from None
        if not np.isfinite(threshold):
            raise ValueError(f"{where}{text!r} needs a finite number; write e.g. 'value>=4'")
        return PositiveRule(rule, op=match.group(1), threshold=threshold)
    raise ValueError(f"{where}{text!r} is not a positives rule; write {EXAMPLES}")


def _action_code(name: str, text: str, where: str) -> int:
    if name in ACTION_CODES:
        return ACTION_CODES[name]
    if name.isdigit() and int(name) <= MAX_ACTION_CODE:
        return int(name)
    raise ValueError(
        f"{where}{text!r}: {name!r} is neither an action name ({', '.join(ACTION_CODES)}) "
        f"nor a code in 0..{MAX_ACTION_CODE}"
    )
