"""Spark DDL derived from a pydantic output model: the table's columns and ai_query's responseFormat."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from lakesynth.errors import ConfigError

_SCALARS = {str: "STRING", int: "BIGINT", float: "DOUBLE", bool: "BOOLEAN"}


def spark_ddl(model: type[BaseModel]) -> str:
    """The model's fields as a Spark DDL schema, e.g. `reasoning STRING, answer STRING`."""
    fields = model.model_fields.items()
    return ", ".join(f"{name} {_spark_type(field.annotation, f'{model.__name__}.{name}')}" for name, field in fields)


def response_format(model: type[BaseModel]) -> str:
    """ai_query's responseFormat for the model, e.g. `STRUCT<response: STRUCT<reasoning: STRING, answer: STRING>>`:
    Databricks wants a struct with one top-level field, which it drops from the result."""
    return f"STRUCT<response: {_struct(model)}>"


def _struct(model: type[BaseModel]) -> str:
    fields = (
        f"{name}: {_spark_type(field.annotation, f'{model.__name__}.{name}')}"
        for name, field in model.model_fields.items()
    )
    return f"STRUCT<{', '.join(fields)}>"


def _spark_type(annotation: typing.Any, where: str) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _spark_type(args[0], where)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is typing.Literal and len({type(a) for a in args}) == 1 and type(args[0]) in _SCALARS:
        return _SCALARS[type(args[0])]
    if origin is list and len(args) == 1:
        return f"ARRAY<{_spark_type(args[0], where)}>"
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if len(present) == 1:  # Optional[X]: Spark columns are nullable anyway
            return _spark_type(present[0], where)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _struct(annotation)
    raise ConfigError(
        f"output model field {where}: type {annotation!r} has no Spark DDL equivalent; "
        "use str, int, float, bool, list[...], a nested model, or Optional of one of these"
    )
