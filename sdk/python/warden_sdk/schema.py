"""JSON Schema (draft 2020-12) from Python type hints, and back from JSON to those types.

Owns the mapping from annotations to schemas and the conversion of validated input
into the annotated types (dataclasses built from objects). It must never evaluate
anything but the annotations of the functions it is given.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Dict, List, Optional, Tuple

_NONE = type(None)


def parse_docstring(doc: str) -> Tuple[str, Dict[str, str]]:
    """The description (everything before a section heading) and the ``Args:`` entries."""
    doc = inspect.cleandoc(doc)
    description: List[str] = []
    params: Dict[str, str] = {}
    section = None
    current = None
    for line in doc.splitlines():
        heading = re.fullmatch(r"(Args|Arguments|Parameters|Returns|Raises|Example|Examples):\s*", line.strip())
        if heading and not line.startswith(" "):
            section = heading.group(1)
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            entry = re.fullmatch(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
            if entry:
                current = entry.group(1)
                params[current] = entry.group(2).strip()
            elif current and line.strip():
                params[current] += " " + line.strip()
    paragraphs = "\n".join(description).strip().split("\n\n")
    text = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
    return text, params


def schema_of(hint: Any, defs: Dict[str, Any]) -> Dict[str, Any]:
    """The schema of one annotation; dataclasses and TypedDicts go to ``$defs``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is _NONE or hint is None:
        return {"type": "null"}
    if origin is typing.Annotated:
        schema = dict(schema_of(args[0], defs))
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
            elif isinstance(extra, dict):
                schema.update(extra)
        return schema
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or _is_union_type(hint):
        options = [schema_of(a, defs) for a in args]
        return {"anyOf": options}
    if origin in (list, List, tuple, set, frozenset) or hint in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": schema_of(item, defs)}
    if origin in (dict, Dict) or hint is dict:
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": schema_of(value, defs)}
    if dataclasses.is_dataclass(hint) or _is_typed_dict(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # placed first so a recursive type refers to itself
            defs[name] = _object_schema(hint, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for the type {hint!r}")


def _is_union_type(hint: Any) -> bool:
    return type(hint).__name__ == "UnionType"  # `int | None`


def _is_typed_dict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__annotations__")


def _object_schema(cls: Any, defs: Dict[str, Any]) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    _, docs = parse_docstring(cls.__doc__ or "")
    properties: Dict[str, Any] = {}
    required: List[str] = []
    if dataclasses.is_dataclass(cls):
        for field in dataclasses.fields(cls):
            prop = schema_of(hints[field.name], defs)
            if field.name in docs:
                prop.setdefault("description", docs[field.name])
            properties[field.name] = prop
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                required.append(field.name)
            elif field.default is not dataclasses.MISSING and _jsonable(field.default):
                prop["default"] = field.default
    else:
        optional = getattr(cls, "__optional_keys__", frozenset())
        for key, hint in hints.items():
            if typing.get_origin(hint) in (typing.NotRequired, typing.Required):
                hint = typing.get_args(hint)[0]
            properties[key] = schema_of(hint, defs)
            if key not in optional:
                required.append(key)
    schema: Dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _with_defs(schema: Dict[str, Any], defs: Dict[str, Any]) -> Dict[str, Any]:
    if defs:
        schema["$defs"] = defs
    return schema


def input_schema(func: Any, docs: Dict[str, str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The input schema of a tool function (its parameters as an object's properties),
    and each parameter's annotation (to convert validated input back)."""
    hints = typing.get_type_hints(func, include_extras=True)
    defs: Dict[str, Any] = {}
    properties: Dict[str, Any] = {}
    required: List[str] = []
    params: Dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{func.__name__}: *args and **kwargs have no schema; name each parameter")
        hint = hints.get(name, Any)
        prop = schema_of(hint, defs)
        if name in docs:
            prop.setdefault("description", docs[name])
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif _jsonable(param.default):
            prop["default"] = param.default
        properties[name] = prop
        params[name] = hint
    schema: Dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return _with_defs(schema, defs), params


def output_schema(func: Any) -> Optional[Dict[str, Any]]:
    """The return annotation's schema, when it describes an object (what MCP promises)."""
    hint = typing.get_type_hints(func, include_extras=True).get("return")
    if hint is None:
        return None
    defs: Dict[str, Any] = {}
    schema = schema_of(hint, defs)
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/") :]
        root = dict(defs.pop(name))
        return _with_defs(root, defs) if root.get("type") == "object" else None
    return _with_defs(schema, defs) if schema.get("type") == "object" else None


def convert(hint: Any, value: Any) -> Any:
    """Validated JSON back into the annotated type (objects into dataclasses)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return convert(args[0], value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint, include_extras=True)
        names = {f.name for f in dataclasses.fields(hint)}
        return hint(**{k: convert(hints[k], v) for k, v in value.items() if k in names})
    if origin in (list, List) and isinstance(value, list) and args:
        return [convert(args[0], v) for v in value]
    if (origin is typing.Union or _is_union_type(hint)) and value is not None:
        for option in args:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return convert(option, value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def to_json(value: Any) -> Any:
    """A tool's result as JSON data (dataclasses become objects)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    return value
