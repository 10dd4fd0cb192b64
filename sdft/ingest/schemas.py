"""Tool schemas: parse them from any container and rewrite Python-style types as JSON Schema.

Some exporters write parameter types as Python annotations (`str`, `dict`, `List[int]`,
`int, optional`) and put `required` beside `parameters` instead of inside it. Chat
templates print the schema as given, so the student would learn from a schema that
no JSON Schema validator or tool runtime accepts. This module rewrites them.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PYTHON_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "dict": "object",
    "object": "object",
    "list": "array",
    "tuple": "array",
    "set": "array",
    "array": "array",
    "none": "null",
    "null": "null",
}
_GENERIC = re.compile(r"^(?:typing\.)?(list|List|tuple|Tuple|set|Set|Sequence)\[(.+)\]$")


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    """Return OpenAI-style tool schemas (`{"type": "function", "function": {...}}`) or None.

    Accepts a list or its JSON string encoding, entries with or without the `function`
    wrapper. Raises ValueError naming the entry that has no function name.
    Datasets repeat one tool set across many records, so results are cached by the JSON
    text of the input and shared between calls: callers must not modify them.
    """
    if value is None or value == "" or value == []:
        return None
    key = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    cached = _cache.get(key)
    if cached is None:
        cached = _parse_tools_uncached(value)
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = cached
    return cached or None


_CACHE_SIZE = 256
_cache: dict[str, list[dict[str, Any]]] = {}


def _parse_tools_uncached(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools: the string is not valid JSON: {exc.msg}") from exc
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise ValueError("tools: expected a list of tool schemas")
    tools = []
    for index, tool in enumerate(value):
        function = tool.get("function", tool)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tools[{index}]: the schema has no function name")
        tools.append({"type": "function", "function": _normalize_function(function)})
    return tools


def tool_names(tools: list[dict[str, Any]] | None) -> set[str] | None:
    if not tools:
        return None
    return {tool["function"]["name"] for tool in tools}


def _normalize_function(function: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in function.items() if key != "required"}
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        parameters = dict(parameters)
        misplaced = function.get("required")
        if "required" not in parameters and isinstance(misplaced, list):
            parameters["required"] = misplaced
        out["parameters"] = _normalize_schema(parameters)
    elif "required" in function:
        out["required"] = function["required"]
    return out


def _normalize_schema(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    declared = schema.get("type")
    if isinstance(declared, str):
        out.update(_json_schema_type(declared))

    properties = schema.get("properties")
    if isinstance(properties, dict):
        required = list(schema.get("required") or [])
        new_properties = {}
        for name, prop in properties.items():
            if not isinstance(prop, dict):
                new_properties[name] = prop
                continue
            prop_type = prop.get("type")
            if isinstance(prop_type, str) and _is_optional(prop_type) and name in required:
                required.remove(name)
            new_properties[name] = _normalize_schema(prop)
        out["properties"] = new_properties
        if "required" in schema:
            out["required"] = required
    items = schema.get("items")
    if isinstance(items, dict):
        out["items"] = _normalize_schema(items)
    return out


def _is_optional(declared: str) -> bool:
    return declared.replace(" ", "").lower().endswith(",optional") or declared.startswith(
        "Optional["
    )


def _json_schema_type(declared: str) -> dict[str, Any]:
    """Map one declared type to JSON Schema keys; unknown spellings are kept as given."""
    text = declared.strip()
    if _is_optional(text):
        text = text.split(",")[0].strip() if "," in text else text[len("Optional[") : -1]
    generic = _GENERIC.match(text)
    if generic:
        return {"type": "array", "items": _json_schema_type(generic.group(2))}
    if text.lower().startswith(("dict[", "mapping[")):
        return {"type": "object"}
    mapped = _PYTHON_TYPES.get(text.lower())
    return {"type": mapped} if mapped else {"type": declared}
