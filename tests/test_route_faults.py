"""A route that cannot authenticate is a route fault: never retried, the next route takes
over, the route and the missing key are named, and it never reads as an engine bug.

The SDKs differ in where a missing key shows: ``openai.OpenAI()`` refuses to build,
``anthropic.Anthropic()`` builds and refuses at the first request. Both must end the
same way, with either provider first, with both drivers, and ``check_factories=True``
must find both at construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from conftest import API_KEY_ENV, ProviderKit, other

from lifecycle import MissingCredentials, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from lifecycle.adapters import Route
from providers import AnthropicMessages
from providers.loopback import Healthy

TIMEOUTS = Timeouts(first_token=5, stale=5, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)


@pytest.fixture(autouse=True)
def no_keys_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def keyless_factory(provider: str, kit: ProviderKit) -> Callable[[], Any]:
    """The provider's client as a user writes it when relying on the environment."""
    if provider == "anthropic":
        anthropic_cls: Any = anthropic.AsyncAnthropic if kit.is_async else anthropic.Anthropic
        base = kit.server.anthropic_base_url
        return lambda: anthropic_cls(base_url=base)
    openai_cls: Any = openai.AsyncOpenAI if kit.is_async else openai.OpenAI
    base = kit.server.openai_base_url
    return lambda: openai_cls(base_url=base)


def keyless_route(kit: ProviderKit) -> Route:
    return kit.route(factory=keyless_factory(kit.name, kit))


def keyless_other_route(kit: ProviderKit) -> Route:
    return kit.other_route(factory=keyless_factory(other(kit.name), kit))


def assert_route_fault(attempt: Any, route: Route, provider: str) -> None:
    reason = attempt.reason or ""
    assert attempt.api_mode == route.api_mode
    assert route.name in reason, reason
    assert API_KEY_ENV[provider] in reason, reason
    assert "unexpected" not in reason, f"a missing key reads as an engine bug: {reason}"


def test_a_route_without_its_key_falls_back_at_once(provider: ProviderKit) -> None:
    first = keyless_route(provider)
    engine = provider.make_engine([first, provider.other_route()], timeouts=TIMEOUTS, retry=RETRY)
    provider.script([Healthy()], model=provider.other_model)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert run.message is not None and run.message.text == provider.text_of_other()
    # Not retried: one attempt on the keyless route, then the other route's.
    assert [a.route_index for a in run.attempts] == [0, 1]
    assert run.attempts[1].outcome == "completed"
    assert_route_fault(run.attempts[0], first, provider.name)
    assert isinstance(run.attempts[0].exception, MissingCredentials)
    assert provider.requests() == [], "a request without credentials reached the server"


def test_both_routes_without_keys_fail_naming_each(provider: ProviderKit) -> None:
    first, second = keyless_route(provider), keyless_other_route(provider)
    engine = provider.make_engine([first, second], timeouts=TIMEOUTS, retry=RETRY)
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert run.state == "failed"
    assert [a.route_index for a in run.attempts] == [0, 1]
    assert_route_fault(run.attempts[0], first, provider.name)
    assert_route_fault(run.attempts[1], second, other(provider.name))
    fault = seen.error.fault
    assert fault is not None and fault.fallback_eligible and not fault.retryable
    assert second.name in str(seen.error) or second.model in str(seen.error)
    assert provider.all_requests() == []


def test_check_factories_finds_a_missing_key_at_construction(provider: ProviderKit) -> None:
    keyless = keyless_route(provider)
    routes = [provider.other_route(), keyless]
    with pytest.raises(MissingCredentials) as refused:
        StreamEngine(routes=routes, check_factories=True)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert r"routes=...)[1]" in message and keyless.name in message, message
    assert API_KEY_ENV[provider.name] in message, message


def test_check_factories_passes_a_route_with_its_key(provider: ProviderKit) -> None:
    route = provider.route()
    provider.make_engine([route], check_factories=True)
    assert provider.clients(route).built_count == 1


class _AnthropicUnchecked(AnthropicMessages):
    """The real adapter without its build-time credentials check: stands for a client
    whose missing credentials only the request itself reveals."""

    def check_credentials(self, client: Any) -> None:
        return None


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_client_that_cannot_authenticate_at_request_time_is_a_route_fault(
    server: Any, make_engine: Any, driver: str
) -> None:
    """The backstop: the SDK's own refusal at the first request (a TypeError) is still a
    route fault, not a bug that fails the run after one attempt."""
    kit = ProviderKit(name="anthropic", server=server, make_engine=make_engine, driver=driver)
    first = kit.route(factory=keyless_factory("anthropic", kit), route_class=_AnthropicUnchecked)
    engine = make_engine([first, kit.other_route()], timeouts=TIMEOUTS, retry=RETRY)
    run, seen = kit.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert [a.route_index for a in run.attempts] == [0, 1]
    assert run.attempts[1].outcome == "completed"
    assert_route_fault(run.attempts[0], first, "anthropic")
    assert kit.requests() == []
