"""Ranking tasks from configuration: ``NAME:RULE[@WEIGHT]``, comma-separated.

``RULE`` is a positives rule (``pipeline.events.positives``, the one grammar for "which events
are positive") that a ranking task can express: ``value>=X`` (a value threshold) or
``action:a,b,...`` (an action set); ``WEIGHT`` is the task's loss weight (default 1). The
result is the JSON form of ``model.ranking_heads`` that model configs store.

A comma also separates the actions of a rule: a piece with a ``:`` starts a new task, one
without continues the previous task's action list. A ``;`` always ends a task.

>>> [t["name"] for t in parse_ranking_tasks("like:value>=4@0.5,click:action:click,purchase")]
['like', 'click']
>>> parse_ranking_tasks("like:value>=4@0.5")[0]
{'name': 'like', 'actions': [], 'min_value': 4.0, 'weight': 0.5}
>>> parse_ranking_tasks("click:action:click,purchase")[0]["actions"]
[2, 5]
"""

from __future__ import annotations

import math
import re
from typing import Any

from model.ranking_heads import RankingTask, check_tasks, task_to_dict
from pipeline.events.positives import EXAMPLES, parse_positives

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
SPEC_EXAMPLES = "'like:value>=4', 'click:action:click,purchase' or 'like:value>=4@0.5'"


def parse_ranking_tasks(
    text: str, setting: str | None = "--ranking-tasks"
) -> tuple[dict[str, Any], ...]:
    """The tasks of a comma-separated list of specs (module docstring), in the JSON form of
    ``model.ranking_heads``; a bad one raises ValueError naming ``setting`` (None: the
    caller names it)."""
    specs: list[str] = []
    for group in str(text).split(";"):
        start = len(specs)
        for piece in group.split(","):
            if ":" in piece or len(specs) == start:
                specs.append(piece.strip())
            else:
                specs[-1] += "," + piece.strip()
    specs = [spec for spec in specs if spec]
    where = "" if setting is None else f"{setting}: "
    if not any(specs):
        raise ValueError(f"{where}no ranking task given; write {SPEC_EXAMPLES}")
    tasks = [parse_ranking_task(spec, setting) for spec in specs]
    try:
        return check_tasks(tasks)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None


def parse_ranking_task(spec: str, setting: str | None = "--ranking-tasks") -> dict[str, Any]:
    """One ``NAME:RULE[@WEIGHT]`` spec as a task's JSON form."""
    where = "" if setting is None else f"{setting}: "
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(
            f"{where}{spec!r} is not NAME:RULE[@WEIGHT] with a name of letters, digits, "
            f"'_', '.', '-'; write {SPEC_EXAMPLES}"
        )
    rule_text, at, weight_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
    weight = 1.0
    if at:
        try:
            weight = float(weight_text)
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"{where}task {name!r}: weight {weight_text!r} is not a number >= 0; "
                f"write e.g. '{name}:value>=4@0.5'"
            )
    try:
        rule = parse_positives(rule_text, setting=None)
    except ValueError as err:
        raise ValueError(f"{where}task {name!r}: {err}") from None
    if rule.actions is not None:
        task = RankingTask(name, actions=rule.actions, weight=weight)
    elif rule.op == ">=":
        task = RankingTask(name, min_value=rule.threshold, weight=weight)
    else:
        raise ValueError(
            f"{where}task {name!r}: {rule.text!r} cannot label a ranking task; a task is "
            f"'value>=X' or 'action:...' (the positives rules {EXAMPLES} less 'all' and the "
            "other comparisons)"
        )
    return task_to_dict(task)
