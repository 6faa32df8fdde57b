"""The credentials of the clients a route's factory builds: made known to the engine's
redaction, and kept from reaching another origin through a redirect.

Both SDKs build their httpx(2) client with ``follow_redirects=True``, and httpx strips
only ``Authorization`` when a redirect leaves the origin: an ``x-api-key`` (Anthropic,
Azure's ``api-key``, any custom auth header) goes along to whatever host the
``Location`` names. The engine's clients get two event hooks on their HTTP client:

- a request hook that registers the auth header values each request actually carries
  (``lifecycle._core.secrets``), so a key produced by a callable ``api_key``, or a header the
  factory set, is redacted like a static key;
- a response hook that refuses a redirect to another origin (scheme, host, port)
  before it is followed: ``CrossOriginRedirect``, a route fault (another route may
  work; the same route would be redirected again). A redirect within the origin is
  followed as before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from lifecycle.adapters import register_secrets

__all__ = ["CrossOriginRedirect", "guard_credentials", "register_client_secrets"]

_AUTH_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|credential", re.IGNORECASE)
_CLIENT_SECRET_ATTRIBUTES = ("api_key", "auth_token", "admin_api_key")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CrossOriginRedirect(Exception):
    """The provider answered with a redirect to another origin; it was not followed,
    because the request carries the route's credentials."""

    def __init__(self, *, status: int, origin: str, target: str) -> None:
        super().__init__(
            f"HTTP {status} redirect from {origin} to another origin ({target}) not followed: "
            "the request carries the route's credentials"
        )
        self.status = status
        self.origin = origin
        self.target = target


def register_client_secrets(client: Any) -> None:
    """Register what ``client`` authenticates with as it stands: its key and token
    attributes and the auth headers it would send by default."""
    values: list[object] = [getattr(client, name, None) for name in _CLIENT_SECRET_ATTRIBUTES]
    try:
        headers = client.default_headers
    except Exception:
        # A client whose credentials cannot be resolved yet: the request hook sees them.
        headers = {}
    values += _auth_values(headers.items() if hasattr(headers, "items") else ())
    register_secrets(values)


def guard_credentials(sdk_client: Any, *, is_async: bool) -> None:
    """Install the two hooks on the SDK client's HTTP client. Idempotent (the SDK's
    ``with_options`` copies share one HTTP client)."""
    http_client: Any = getattr(sdk_client, "_client", None)
    hooks = getattr(http_client, "event_hooks", None)
    if not isinstance(hooks, dict):
        return  # not an httpx(2) client: install_connection_tagging reports that
    request_hook, response_hook = (
        (_register_request_async, _refuse_redirect_async)
        if is_async
        else (_register_request, _refuse_redirect)
    )
    requests = list(hooks.get("request", []))
    responses = list(hooks.get("response", []))
    if request_hook in requests and response_hook in responses:
        return
    if request_hook not in requests:
        requests.append(request_hook)
    if response_hook not in responses:
        responses.append(response_hook)
    http_client.event_hooks = {"request": requests, "response": responses}


def _auth_values(items: Iterable[tuple[Any, Any]]) -> list[object]:
    values: list[object] = []
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(name, str) and _AUTH_HEADER.search(name):
            values.append(value)
    return values


@functools.lru_cache(maxsize=512)
def _is_auth_name(lowered_name: bytes) -> bool:
    return _AUTH_HEADER.search(lowered_name.decode("latin-1")) is not None


def _register_request(request: Any) -> None:
    headers = request.headers
    raw = getattr(headers, "raw", None)
    if raw is None:
        register_secrets(_auth_values(headers.items()))
        return
    # Per request: only the auth-bearing values are decoded (``items()`` decodes every
    # name and value), joined per name as ``items()`` joins a repeated header.
    auth: dict[bytes, list[bytes]] = {}
    for name, value in raw:
        lowered = name.lower()
        if _is_auth_name(lowered):
            auth.setdefault(lowered, []).append(value)
    if auth:
        encoding = headers.encoding
        register_secrets(
            ", ".join(value.decode(encoding) for value in values) for values in auth.values()
        )


async def _register_request_async(request: Any) -> None:
    _register_request(request)


def _refuse_redirect(response: Any) -> None:
    if not response.has_redirect_location:
        return
    source = response.request.url
    target = source.join(response.headers["location"])
    if _origin(target) != _origin(source):
        raise CrossOriginRedirect(
            status=response.status_code, origin=_shown(source), target=_shown(target)
        )


async def _refuse_redirect_async(response: Any) -> None:
    _refuse_redirect(response)


def _origin(url: Any) -> tuple[str, str, int | None]:
    scheme = str(url.scheme)
    return scheme, str(url.host), url.port or _DEFAULT_PORTS.get(scheme)


def _shown(url: Any) -> str:
    """Scheme, host and port only: a URL's path or query may carry a token."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"
