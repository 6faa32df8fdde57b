"""Request-body validation: the loopback server answers 400 to what the real API rejects.

Chat Completions and Responses bodies are checked against the request schemas of the
official OpenAI OpenAPI document (extracted into ``schemas/`` by ``_extract_schemas.py``).
Anthropic publishes no such document: Messages bodies are checked against the installed
``anthropic`` SDK's own request types (``MessageCreateParams`` and the content block
params, generated from Anthropic's API definition), plus the rules Anthropic documents
beyond types ("Tool use", "Building with extended thinking"): consecutive turns of one
role are merged, a turn with ``tool_use`` blocks is answered by the next turn's
``tool_result`` blocks (first in that turn, each answering one of its calls), tool_use
ids match ``^[a-zA-Z0-9_-]+$``, and with thinking enabled the final assistant turn, when
it calls a tool, starts with a signed ``thinking`` or a ``redacted_thinking`` block.

``problems(provider, body)`` returns what is wrong, each naming its place in the body
(``messages.1.content.0.id: ...``); an empty tuple means the body is accepted.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib.util
import json
import re
import types
import typing
from importlib import resources
from typing import Any

from ._recordings import Provider

__all__ = ["problems", "validation_available"]

_MAX_PROBLEMS = 10
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_SCHEMA_FILES: dict[Provider, str] = {
    "openai": "chat_completions.json",
    "openai_responses": "responses.json",
}


def validation_available() -> bool:
    """Whether ``jsonschema`` (the ``loopback`` extra) is installed."""
    # find_spec, not an import: `lifecycle serve` starts without paying for jsonschema.
    return importlib.util.find_spec("jsonschema") is not None


def problems(provider: Provider, body: dict[str, Any]) -> tuple[str, ...]:
    if provider == "anthropic":
        found = _anthropic_problems(body)
    else:
        found = _openai_problems(provider, body)
    return tuple(found[:_MAX_PROBLEMS])


# ----------------------------------------------------------------- OpenAI: the OpenAPI schemas


@functools.cache
def _validator(provider: Provider) -> Any:
    from jsonschema import Draft202012Validator, validators

    text = (
        resources.files(__package__)
        .joinpath("schemas", _SCHEMA_FILES[provider])
        .read_text(encoding="utf-8")
    )
    root = json.loads(text)
    keywords = Draft202012Validator.VALIDATORS
    pruning = validators.extend(
        Draft202012Validator,
        {
            "oneOf": _discriminated(keywords["oneOf"], root),
            "anyOf": _discriminated(keywords["anyOf"], root),
        },
    )
    return pruning(root)


def _discriminated(keyword: Any, root: dict[str, Any]) -> Any:
    """A union keyword that tries only the branches the item's discriminator can name.

    Plain validation of a Responses body tries every one of the ~30 input item schemas
    for each item (tens of ms a body); a branch whose discriminator property cannot take
    the item's value cannot match, so leaving it out changes no verdict.
    """

    def check(validator: Any, branches: list[Any], instance: Any, schema: dict[str, Any]) -> Any:
        discriminator = schema.get("discriminator")
        prop = discriminator.get("propertyName") if isinstance(discriminator, dict) else None
        if isinstance(prop, str) and isinstance(instance, dict):
            value = instance.get(prop)
            if isinstance(value, str):
                named = [b for b in branches if _may_name(root, b, prop, value)]
                if named:
                    branches = named
        yield from keyword(validator, branches, instance, schema)

    return check


def _may_name(root: dict[str, Any], branch: Any, prop: str, value: str, depth: int = 0) -> bool:
    """False only when ``branch`` certainly refuses ``{prop: value}``."""
    if not isinstance(branch, dict) or depth > 8:
        return True
    ref = branch.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = root["$defs"].get(ref[len("#/$defs/") :])
        if not _may_name(root, target, prop, value, depth + 1):
            return False
    constraint = branch.get("properties", {}).get(prop)
    if isinstance(constraint, dict):
        if "const" in constraint and constraint["const"] != value:
            return False
        if isinstance(constraint.get("enum"), list) and value not in constraint["enum"]:
            return False
    for union in ("oneOf", "anyOf"):
        members = branch.get(union)
        if (
            isinstance(members, list)
            and members
            and not any(_may_name(root, m, prop, value, depth + 1) for m in members)
        ):
            return False
    return True


def _place(path: collections.abc.Iterable[Any]) -> str:
    return ".".join(str(part) for part in path) or "body"


def _wrong_branch(error: Any, depth: int) -> bool:
    """Whether a branch's error only says the value is another kind of thing entirely."""
    if len(error.absolute_path) == depth and error.validator == "type":
        return True
    at_discriminator = len(error.absolute_path) == depth + 1 and error.absolute_path[-1] in (
        "type",
        "role",
    )
    return at_discriminator and error.validator in ("enum", "const")


def _describe(error: Any, out: list[str]) -> None:
    """Name the problems under a union by the branch the value came closest to."""
    if not error.context:
        text = f"{_place(error.absolute_path)}: {error.message}"
        if text not in out:
            out.append(text)
        return
    depth = len(error.absolute_path)
    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    plausible = [
        errors for errors in branches.values() if not any(_wrong_branch(e, depth) for e in errors)
    ]
    if plausible:
        for sub in min(plausible, key=len):
            _describe(sub, out)
        return
    tags = [
        e for e in error.context if e.validator in ("enum", "const") and _wrong_branch(e, depth)
    ]
    if tags and {e.relative_schema_path[0] for e in tags} == branches.keys():
        # No branch takes this tag (a role, a type): name every value some branch takes.
        allowed: list[Any] = []
        for tag in tags:
            values = tag.validator_value if tag.validator == "enum" else [tag.validator_value]
            allowed += [v for v in values if v not in allowed]
        text = f"{_place(tags[0].absolute_path)}: {tags[0].instance!r} is not one of {allowed}"
    else:
        text = f"{_place(error.absolute_path)}: {error.message}"
    if text not in out:
        out.append(text)


@functools.cache
def _parameters(provider: Provider) -> frozenset[str]:
    """The top-level parameters the request schema names (across its allOf parts)."""
    validator = _validator(provider)
    defs = validator.schema["$defs"]
    names: set[str] = set()
    pending = [validator.schema]
    while pending:
        node = pending.pop()
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            pending.append(defs[ref[len("#/$defs/") :]])
        names.update(node.get("properties", {}))
        pending.extend(part for part in node.get("allOf", []) if isinstance(part, dict))
    return frozenset(names)


def _openai_problems(provider: Provider, body: dict[str, Any]) -> list[str]:
    errors = sorted(_validator(provider).iter_errors(body), key=lambda e: list(e.absolute_path))
    # The schema leaves additionalProperties open; the API refuses a parameter it does
    # not know (a Chat `messages` sent to Responses).
    described = [
        f"{key}: Unknown parameter: '{key}'." for key in body if key not in _parameters(provider)
    ]
    for error in errors:
        _describe(error, described)
    return described


# ----------------------------------------------------------------- Anthropic: SDK types + rules


def _unwrap(hint: Any) -> Any:
    while typing.get_origin(hint) in (typing.Required, typing.NotRequired, typing.Annotated):
        hint = typing.get_args(hint)[0]
    return hint


def _is_typed_dict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__total__")


@functools.cache
def _fields(typed_dict: type) -> tuple[dict[str, Any], frozenset[str]]:
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    # Not __required_keys__: the SDK's modules use string annotations, under which
    # Python 3.11 cannot see `Required[...]` in a total=False TypedDict.
    total = bool(getattr(typed_dict, "__total__", True))
    required = {
        key
        for key, hint in hints.items()
        if typing.get_origin(_strip_annotated(hint)) is typing.Required
        or (total and typing.get_origin(_strip_annotated(hint)) is not typing.NotRequired)
    }
    return hints, frozenset(required)


def _strip_annotated(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _literal_of(typed_dict: type, key: str) -> tuple[Any, ...]:
    hint = _unwrap(_fields(typed_dict)[0].get(key))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _subclass(container: type | None, abstract: type) -> bool:
    if container is None:
        return False
    try:
        return issubclass(container, abstract)
    except TypeError:  # a typing Protocol such as the SDK's SequenceNotStr
        return abstract is collections.abc.Iterable and hasattr(container, "__iter__")


def _check(value: Any, hint: Any, place: str, out: list[str]) -> None:
    """Check ``value`` against an SDK type hint; types it cannot judge are accepted."""
    hint = _unwrap(hint)
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            out.append(f"{place}: {value!r} is not one of {allowed}")
        return
    if origin in (typing.Union, types.UnionType):
        _check_union(value, typing.get_args(hint), place, out)
        return
    if _is_typed_dict(hint):
        _check_typed_dict(value, hint, place, out)
        return
    if hint is str or hint is bool:
        if not isinstance(value, hint):
            out.append(f"{place}: expected {hint.__name__}, got {type(value).__name__}")
        return
    if hint is int or hint is float:
        kinds = (int,) if hint is int else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool):
            out.append(f"{place}: expected {hint.__name__}, got {type(value).__name__}")
        return
    if hint is type(None):
        if value is not None:
            out.append(f"{place}: expected null")
        return
    container = origin if isinstance(origin, type) else None
    if _subclass(container, collections.abc.Mapping):
        if not isinstance(value, dict):
            out.append(f"{place}: expected an object, got {type(value).__name__}")
        return
    if _subclass(container, collections.abc.Iterable):
        if not isinstance(value, list):
            out.append(f"{place}: expected a list, got {type(value).__name__}")
            return
        (item,) = typing.get_args(hint)[:1] or (Any,)
        for i, element in enumerate(value):
            _check(element, item, f"{place}.{i}", out)
        return
    # Anything else (a model class, a date, an SDK alias) the wire cannot judge: accepted.


def _check_union(value: Any, members: tuple[Any, ...], place: str, out: list[str]) -> None:
    members = tuple(_unwrap(m) for m in members)
    typed_dicts = [m for m in members if _is_typed_dict(m)]
    if isinstance(value, dict) and typed_dicts and _check_tagged(value, typed_dicts, place, out):
        return
    attempts: list[list[str]] = []
    for member in members:
        found: list[str] = []
        _check(value, member, place, found)
        if not found:
            return
        attempts.append(found)
    # A member of another kind altogether (str for a list) says least about the mistake.
    closer = [a for a in attempts if not (len(a) == 1 and a[0].startswith(f"{place}: expected "))]
    candidates = closer or attempts
    if candidates:
        fewest: list[str] = min(candidates, key=len)
        out.extend(fewest)


def _check_tagged(
    value: dict[str, Any], typed_dicts: list[type], place: str, out: list[str]
) -> bool:
    """Judge a value of a tagged union by the member its tag names; False if untagged."""
    for tag in ("type", "role"):
        tags = [(m, _literal_of(m, tag)) for m in typed_dicts]
        if not any(literals for _, literals in tags):
            continue
        if tag in value:
            named = [m for m, literals in tags if value[tag] in literals]
        else:  # e.g. a custom tool, whose "type" may be left out
            named = [m for m in typed_dicts if tag not in _fields(m)[1]]
        if named:
            _check(value, named[0], place, out)
            return True
        documented = _DOCUMENTED_BLOCKS.get(str(value.get(tag))) if tag == "type" else None
        if documented is not None:
            for key, kind_of in documented.items():
                if not isinstance(value.get(key), kind_of):
                    out.append(f"{place}.{key}: Field required ({kind_of.__name__})")
            return True
        known = ", ".join(sorted({str(t) for _, literals in tags for t in literals}))
        if tag in value:
            out.append(f"{place}.{tag}: {value[tag]!r} is not one of {known}")
        else:
            out.append(f"{place}.{tag}: Field required")
        return True
    return False


def _check_typed_dict(value: Any, typed_dict: type, place: str, out: list[str]) -> None:
    if not isinstance(value, dict):
        out.append(f"{place}: expected an object, got {type(value).__name__}")
        return
    hints, required = _fields(typed_dict)
    documented = _documented_shape(value, typed_dict)
    if documented is not None:
        for key, kind_of in documented.items():
            if not isinstance(value.get(key), kind_of):
                out.append(f"{place}.{key}: Field required ({kind_of.__name__})")
        return
    for key in sorted(required - value.keys()):
        out.append(f"{place}.{key}: Field required")
    for key, element in value.items():
        if key in hints:
            _check(element, hints[key], f"{place}.{key}", out)
        elif key in _DOCUMENTED_FIELDS and "role" not in hints:
            if not isinstance(element, _DOCUMENTED_FIELDS[key]):
                out.append(f"{place}.{key}: expected an object")
        elif place != "body":  # the top level: the API may know keys an older SDK does not
            out.append(f"{place}.{key}: Extra inputs are not permitted")


def _documented_shape(value: dict[str, Any], typed_dict: type) -> dict[str, type] | None:
    """The documented fields of ``value``'s kind when the installed SDK's type for its
    place predates that kind (an older SDK's ``Source`` knows only base64, its
    ``ToolParam`` no server tool); None when the SDK's type is the judge."""
    kind = value.get("type")
    own = _literal_of(typed_dict, "type")
    if not isinstance(kind, str) or kind in own:
        return None
    if "base64" in own and kind in _DOCUMENTED_SOURCES:
        return _DOCUMENTED_SOURCES[kind]
    hints = _fields(typed_dict)[0]
    if "type" not in hints and "input_schema" in hints and _VERSIONED_TOOL.match(kind):
        return {"name": str}
    return None


def _sdk_request_type() -> Any:
    from anthropic.types import message_create_params

    return message_create_params.MessageCreateParamsBase


_DOCUMENTED_BLOCKS: dict[str, dict[str, type]] = {
    # The extended-thinking blocks by their documented fields, for an installed SDK
    # older than them (its union of block types does not name them).
    "thinking": {"thinking": str, "signature": str},
    "redacted_thinking": {"data": str},
}
_DOCUMENTED_SOURCES: dict[str, dict[str, type]] = {
    # An image or document by URL, for an SDK whose source type knows only base64.
    "url": {"url": str},
}
_DOCUMENTED_FIELDS: dict[str, type] = {
    # Prompt caching, on any content block, system block or tool (never on a message).
    "cache_control": dict,
}
_VERSIONED_TOOL = re.compile(r"^[a-z_]+_\d{8}$")
"""Anthropic's server and client tools (``web_search_20250305``), by their documented
naming; each also needs a ``name``."""


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _anthropic_problems(body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    _check_typed_dict(body, _sdk_request_type(), "body", out)
    out = [p.removeprefix("body.") for p in out]
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return out
    if not messages:
        out.append("messages: at least one message is required")
    out.extend(_thinking_config_problems(body))
    out.extend(_tool_use_problems(messages, thinking=_thinking_enabled(body)))
    return out


def _thinking_enabled(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _thinking_config_problems(body: dict[str, Any]) -> list[str]:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return []
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        return ["thinking.enabled.budget_tokens: Field required"]
    out = []
    if budget < 1024:
        out.append("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and budget >= max_tokens:
        out.append("max_tokens: must be greater than thinking.budget_tokens")
    return out


def _turns(messages: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Consecutive messages of one role merged, as the API does; each block with its place."""
    turns: list[tuple[str, list[tuple[str, Any]]]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        blocks = [(f"messages.{i}.content.{j}", b) for j, b in enumerate(_blocks(message))]
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((str(role), blocks))
    return turns


def _kind(block: Any) -> Any:
    return block.get("type") if isinstance(block, dict) else None


def _tool_use_problems(messages: list[dict[str, Any]], *, thinking: bool) -> list[str]:
    out: list[str] = []
    turns = _turns(messages)
    seen_ids: set[str] = set()
    answered_by_previous: dict[str, str] = {}
    for t, (role, blocks) in enumerate(turns):
        calls = {}
        for place, block in blocks:
            if _kind(block) != "tool_use":
                continue
            call_id = block.get("id")
            if not isinstance(call_id, str):
                continue
            if not _TOOL_USE_ID.match(call_id):
                out.append(f"{place}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
            if call_id in seen_ids:
                out.append(f"{place}.id: tool_use ids must be unique, {call_id!r} repeats")
            seen_ids.add(call_id)
            calls[call_id] = place
        results = [(p, b) for p, b in blocks if _kind(b) == "tool_result"]
        if results and role != "user":
            out.append(f"{results[0][0]}: tool_result blocks belong in a user turn")
        leading = 0
        while leading < len(blocks) and _kind(blocks[leading][1]) == "tool_result":
            leading += 1
        for place, block in results:
            use_id = block.get("tool_use_id")
            if use_id not in answered_by_previous:
                out.append(
                    f"{place}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id!r}."
                    " Each `tool_result` block must have a corresponding `tool_use` block in"
                    " the previous message."
                )
        if answered_by_previous and leading < len(results):
            out.append(
                f"{results[leading][0]}: tool_result blocks must come first in the user turn"
                " that answers tool_use blocks"
            )
        answered = {b.get("tool_use_id") for _, b in results}
        missing = [cid for cid in answered_by_previous if cid not in answered]
        if missing:
            first = blocks[0][0] if blocks else f"turn {t}"
            out.append(
                f"{first}: `tool_use` ids were found without `tool_result` blocks immediately"
                f" after: {', '.join(missing)}. Each `tool_use` block must have a corresponding"
                " `tool_result` block in the next message."
            )
        answered_by_previous = calls if role == "assistant" else {}
    if answered_by_previous:
        out.append(
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result`"
            f" blocks immediately after: {', '.join(answered_by_previous)}. Each `tool_use`"
            " block must have a corresponding `tool_result` block in the next message."
        )
    if thinking:
        out.extend(_thinking_first_problems(turns))
    return out


def _thinking_first_problems(turns: list[tuple[str, list[tuple[str, Any]]]]) -> list[str]:
    assistant = [blocks for role, blocks in turns if role == "assistant"]
    if not assistant:
        return []
    final = assistant[-1]
    if not any(_kind(b) == "tool_use" for _, b in final):
        return []
    place, first = final[0]
    if _kind(first) == "redacted_thinking":
        return []
    signature = first.get("signature") if isinstance(first, dict) else None
    if _kind(first) == "thinking" and isinstance(signature, str) and signature:
        return []
    found = _kind(first)
    if found == "thinking":
        return [f"{place}.signature: a thinking block sent back must carry its signature"]
    return [
        f"{place}: Expected `thinking` or `redacted_thinking`, but found `{found}`. When"
        " `thinking` is enabled, a final `assistant` message that calls a tool must start"
        " with a thinking block"
    ]
