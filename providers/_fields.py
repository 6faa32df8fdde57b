"""Reading fields of SDK event objects across SDK versions.

An older SDK builds an event it has no type for (a thinking block on anthropic 0.40, a
usage detail on openai 1.78) from the nearest known model, keeping the unknown fields as
extras, or leaves a nested object a plain dict. Either way the wire's field is there;
these helpers read it whichever form it took.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from lifecycle.adapters import HEADER_ALLOWLIST

__all__ = ["field_of", "int_field", "kept_headers", "wire_dict"]


_is_mapping: dict[type, bool] = {}
"""Per type, whether it is a Mapping: ``isinstance`` against the ABC takes two calls
through ``ABCMeta.__instancecheck__`` per field of every event."""


def field_of(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; None when absent or when ``obj`` is None."""
    if obj is None:
        return None
    kind = type(obj)
    is_mapping = _is_mapping.get(kind)
    if is_mapping is None:
        is_mapping = _is_mapping[kind] = isinstance(obj, Mapping)
    if is_mapping:
        return obj.get(name)
    return getattr(obj, name, None)


def int_field(obj: Any, *path: str) -> int | None:
    """The integer at ``path`` under ``obj``, or None: a count the provider did not send
    (or sent as something other than an integer) is unknown, not zero."""
    value = obj
    for name in path:
        value = field_of(value, name)
    kind = type(value)  # exact types first: no call for an int or a None
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is bool or value is None or not isinstance(value, int):
        return None
    return value


def wire_dict(obj: Any) -> dict[str, Any]:
    """The object as the JSON the provider sent: only the fields the wire carried, under
    their wire names, unknown ones included."""
    if isinstance(obj, Mapping):
        return {str(key): _plain(value) for key, value in obj.items()}
    dumped = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {str(key): value for key, value in dumped.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "model_dump"):
        return wire_dict(value)
    return value


def kept_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The response headers the engine keeps (``HEADER_ALLOWLIST``), by lowercase name,
    a repeated one joined as ``items()`` joins it. From an httpx(2) ``Headers``, its raw
    bytes: only the kept values are decoded (``items()`` decodes every name and value,
    asking for the encoding twice per header). Any other mapping is returned as it is."""
    raw = getattr(headers, "raw", None)
    if raw is None:
        return headers
    kept: dict[str, list[bytes]] = {}
    for name, value in raw:
        lowered = _kept_name(name)
        if lowered is not None:
            kept.setdefault(lowered, []).append(value)
    if not kept:
        return {}
    encoding: str = getattr(headers, "encoding", "ascii")
    return {name: ", ".join(v.decode(encoding) for v in values) for name, values in kept.items()}


@functools.lru_cache(maxsize=512)
def _kept_name(name: bytes) -> str | None:
    lowered = name.decode("latin-1").lower()
    return lowered if lowered in HEADER_ALLOWLIST else None
