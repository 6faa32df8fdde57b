"""Extract the request-body schemas the loopback server validates against from the
official OpenAI OpenAPI document, into ``schemas/*.json`` (package data).

Run from the repository root when the document is updated::

    python -m providers.loopback._extract_schemas ../shared/specs/openai-openapi.json

The package never reads the document at run time: it ships what this writes. Each
output is one self-contained JSON Schema (draft 2020-12): the request schema and every
schema it references, as ``$defs``, with descriptions and examples dropped.

Two adjustments make the document's schemas mean what the API does:

- ``nullable: true`` (an OpenAPI 3.0 keyword the 3.1 document still uses, meaningless in
  JSON Schema 2020-12) becomes an explicit ``null`` alternative, so a body the SDK sends
  with ``null`` is not rejected on a technicality.
- The ``oneOf`` of ``InputItem`` (a Responses input item) becomes ``anyOf``: a message
  whose content is a list of parts matches both ``EasyInputMessage`` and ``InputMessage``,
  so under ``oneOf`` every such message would be invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "schemas"
REQUESTS = {
    "chat_completions": "CreateChatCompletionRequest",
    "responses": "CreateResponse",
}
ANY_OF_UNIONS = frozenset({"InputItem"})
"""Schemas whose ``oneOf`` the API applies as ``anyOf`` (see the module docstring)."""
_DROPPED = frozenset({"description", "example", "examples", "title", "deprecated"})
_PREFIX = "#/components/schemas/"


def _references(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            found.add(ref[len(_PREFIX) :])
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for value in node:
            _references(value, found)


def _closure(schemas: dict[str, Any], root: str) -> list[str]:
    seen: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        found: set[str] = set()
        _references(schemas[name], found)
        pending.extend(sorted(found - seen))
    return sorted(seen)


def _clean(node: Any, *, in_properties: bool = False) -> Any:
    if isinstance(node, list):
        return [_clean(value) for value in node]
    if not isinstance(node, dict):
        return node
    if in_properties:  # keys are property names, never keywords to drop
        return {key: _clean(value) for key, value in node.items()}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key.startswith("x-"):
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(_PREFIX):
            out[key] = "#/$defs/" + value[len(_PREFIX) :]
        elif key in ("properties", "patternProperties", "$defs"):
            out[key] = _clean(value, in_properties=True)
        else:
            out[key] = _clean(value)
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        elif isinstance(kind, list):
            out["type"] = [*kind, "null"] if "null" not in kind else kind
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def extract(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    extracted: dict[str, dict[str, Any]] = {}
    for api_mode, root in REQUESTS.items():
        defs = {name: _clean(schemas[name]) for name in _closure(schemas, root)}
        for name in ANY_OF_UNIONS & defs.keys():
            union = defs[name]
            union["anyOf"] = union.pop("oneOf")
        extracted[api_mode] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": (
                f"components.schemas.{root} of the OpenAI OpenAPI document "
                f"{document.get('info', {}).get('version', '')}, "
                "extracted by providers/loopback/_extract_schemas.py"
            ),
            "$ref": f"#/$defs/{root}",
            "$defs": defs,
        }
    return extracted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("document", type=Path, help="the OpenAI OpenAPI document (JSON)")
    args = parser.parse_args(argv)
    document = json.loads(args.document.read_text(encoding="utf-8"))
    OUT.mkdir(exist_ok=True)
    for api_mode, schema in extract(document).items():
        path = OUT / f"{api_mode}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{path}: {len(schema['$defs'])} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
