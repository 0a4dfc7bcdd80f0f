"""Every config field says what it does: the descriptions are the reference a link config or a
``-P`` param is written from, and a field without one is a parameter nobody can look up."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from tradeflow.config import RunConfig


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable through its fields' annotations (Optional, unions, tuples)."""
    seen: list[type[BaseModel]] = []
    todo: list[typing.Any] = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, type) and issubclass(node, BaseModel):
            if node not in seen:
                seen.append(node)
                todo.extend(field.annotation for field in node.model_fields.values())
        else:
            todo.extend(typing.get_args(node))
    return seen


def test_walk_reaches_the_nested_sections():
    names = {model.__name__ for model in _models(RunConfig)}
    assert {"RunConfig", "TradeMasterParams", "SB3Params", "SplitConfig", "ReviewConfig", "FinAgentParams"} <= names


def test_every_config_field_has_a_description():
    missing = [f"{model.__name__}.{name}" for model in _models(RunConfig)
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"
