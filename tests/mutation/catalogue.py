"""Hand-written mutations: bugs a developer could plausibly write, as source-text edits.

Each ``Mutation`` replaces one exact snippet (``old``, found exactly once in ``file``)
with its buggy variant (``new``). ``run.py`` applies each to a throwaway copy of the
checkout and runs the suite against it; a mutation the suite does not fail on
survives. ``tests/test_mutation_catalogue.py`` keeps the entries applicable: when the
production code under a mutation changes, update the entry with it.

Unlike ``tests/mutations.py`` (monkeypatched bugs the suite proves it catches on every
CI run), these are never applied in CI's test run: a full pass costs a suite run per
surviving mutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["BUG_CLASSES", "CATALOGUE", "REQUIRED", "Mutation", "by_name"]

BUG_CLASSES: Final = (
    "watchdog arithmetic",
    "abort thread",
    "cleanup order",
    "cleanup target",
    "client retirement",
    "policy",
    "commit point",
    "delivery",
    "breaker",
    "socket finding",
    "diagnostics",
    "secrets",
)
"""Every class has at least one entry (the catalogue test checks it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Mutation:
    name: str
    bug_class: str
    file: str
    """Repo-relative path of the mutated file."""
    old: str
    """An exact snippet of ``file``: it must occur there exactly once."""
    new: str
    """What the snippet becomes: the bug."""
    why: str
    """The plausible developer mistake, in one line."""
    first: tuple[str, ...]
    """Test files most likely to catch it: run before the rest of the suite."""


CATALOGUE: Final[tuple[Mutation, ...]] = (
    # -- watchdog arithmetic ---------------------------------------------------------------
    Mutation(
        name="first_token_clock_uses_stale",
        bug_class="watchdog arithmetic",
        file="lifecycle/_drivers/watchdog.py",
        old="self.first_token_due = sent_at + first_token",
        new="self.first_token_due = sent_at + stale",
        why="the first_token deadline copied from the stale line next to it",
        first=("tests/test_attempt_clocks.py", "tests/test_driver_faults.py"),
    ),
    Mutation(
        name="stale_never_brought_forward",
        bug_class="watchdog arithmetic",
        file="lifecycle/_drivers/watchdog.py",
        old="if due < watch.first_token_due:",
        new="if due > watch.first_token_due:",
        why="comparison flipped: a stale deadline shorter than first_token's rest is not pushed",
        first=("tests/test_attempt_clocks.py", "tests/test_driver_faults.py"),
    ),
    Mutation(
        name="loop_timer_holding_defers_total",
        bug_class="watchdog arithmetic",
        file="lifecycle/_drivers/watchdog.py",
        old='    if watch.holding and clock != "total":\n        due = min(current + watch.stale,',
        new="    if watch.holding:\n        due = min(current + watch.stale,",
        why="on the loop timer, a caller holding an event also holds off Timeouts.total",
        first=(
            "tests/test_ending_cleanup.py",
            "tests/test_driver_faults.py",
            "tests/test_caller_input.py",
            "tests/test_verdicts.py",
        ),
    ),
    # -- abort from a foreign thread -------------------------------------------------------
    Mutation(
        name="abort_closes_socket_on_watchdog_thread",
        bug_class="abort thread",
        file="lifecycle/_drivers/connection.py",
        old="            _shutdown(sock)\n            return True",
        new=(
            "            _shutdown(sock)\n"
            '            if hasattr(sock, "close"):\n'
            "                sock.close()\n"
            "            return True"
        ),
        why="abort() also closes the socket, to free its descriptor at once (from any thread)",
        first=("tests/test_real_closes.py", "tests/test_mutations.py"),
    ),
    # -- cleanup order and target ----------------------------------------------------------
    Mutation(
        name="cleanup_releases_before_abort",
        bug_class="cleanup order",
        file="lifecycle/_drivers/run_base.py",
        old='        shut = connection.abort(reason="cleanup")',
        new='        connection.release()\n        shut = connection.abort(reason="cleanup")',
        why="release first, so that the connection is released even if the abort raises",
        first=(
            "tests/test_ending_cleanup.py",
            "tests/test_real_closes.py",
            "tests/test_driver_faults.py",
            "tests/test_driver_interrupt.py",
        ),
    ),
    Mutation(
        name="rebuild_when_cancelled",
        bug_class="cleanup order",
        file="lifecycle/_drivers/run_base.py",
        old="if cancelled or out_of_time:",
        new="if cancelled and out_of_time:",
        why="the deferred rebuild's condition written with and instead of or",
        first=(
            "tests/test_ending_cleanup.py",
            "tests/test_driver_interrupt.py",
            "tests/test_driver_faults.py",
        ),
    ),
    Mutation(
        name="cleanup_aimed_at_next_route",
        bug_class="cleanup target",
        file="lifecycle/_core/machine.py",
        old="        route = self.routes[attempt.route_index]\n        self.pending_cleanup",
        new=(
            "        route = self.routes[(attempt.route_index + 1) % len(self.routes)]\n"
            "        self.pending_cleanup"
        ),
        why="the cleanup planned for the route the run moves on to (the bug that began this)",
        first=("tests/test_driver_faults.py", "tests/test_paths.py"),
    ),
    Mutation(
        name="cleanup_rebuilds_other_route",
        bug_class="cleanup target",
        file="lifecycle/_drivers/run_steps.py",
        old="        generation, error, leaving = yield MoveInSuccessor(slot, leaving)",
        new=(
            "        after = (plan.attempt.route_index + 1) % len(run._routes)\n"
            "        other = slot_of(run._clients[after])\n"
            "        generation, error, leaving = yield MoveInSuccessor(other, leaving)"
        ),
        why="the cleanup moves a successor in for the route the run falls back to",
        first=("tests/test_async_driver.py", "tests/test_driver_faults.py"),
    ),
    Mutation(
        name="cleanup_retires_in_first_route",
        bug_class="cleanup target",
        file="lifecycle/_drivers/run_steps.py",
        old="    to_close = run._cleanup_retire(plan, lease, slot)",
        new="    to_close = run._cleanup_retire(plan, lease, slot_of(run._clients[0]))",
        why="the cleanup retires in the primary route's slot whichever route failed",
        first=("tests/test_driver_faults.py", "tests/test_client_slots.py", "tests/test_paths.py"),
    ),
    # -- client retirement ------------------------------------------------------------------
    Mutation(
        name="successor_built_on_the_run",
        bug_class="client retirement",
        file="lifecycle/_drivers/sync_run.py",
        old="                    return slot.successor(), None, leaving",
        new=(
            "                    with slot._lock:\n"
            "                        if not slot._live:\n"
            "                            slot._live.append(slot._new_generation())\n"
            "                    return slot.successor(), None, leaving"
        ),
        why="the retired client's successor built by the factory in cleanup, as before spares",
        first=("tests/test_spare_client.py", "tests/test_driver_faults.py", "tests/test_paths.py"),
    ),
    Mutation(
        name="retired_client_closed_under_other_runs",
        bug_class="client retirement",
        file="lifecycle/_drivers/client_slots.py",
        old="if generation.retired and generation.users == 0 and not generation.closed:",
        new="if generation.retired and not generation.closed:",
        why="a retired client closed by the first run that releases it, not the last",
        first=("tests/test_shared_client_retirement.py", "tests/test_client_slots.py"),
    ),
    # -- policy ------------------------------------------------------------------------------
    Mutation(
        name="retry_one_attempt_too_many",
        bug_class="policy",
        file="lifecycle/_core/policy.py",
        old="if attempts_on_route < policy.max_attempts:",
        new="if attempts_on_route <= policy.max_attempts:",
        why="max_attempts read as retries after the first attempt",
        first=("tests/test_driver_policy.py", "tests/test_stateful_core.py"),
    ),
    Mutation(
        name="backoff_doubles_from_the_first",
        bug_class="policy",
        file="lifecycle/_core/policy.py",
        old="policy.initial_backoff * 2 ** max(0, failed_attempts - 1)",
        new="policy.initial_backoff * 2**failed_attempts",
        why="the exponent counts the failures instead of the failures before this one",
        first=(
            "tests/test_config.py",
            "tests/test_driver_policy.py",
            "tests/test_stateful_core.py",
        ),
    ),
    Mutation(
        name="stale_before_fallback_one_late",
        bug_class="policy",
        file="lifecycle/_core/policy.py",
        old="stale_on_route >= eager",
        new="stale_on_route > eager",
        why="stale_before_fallback read as stale attempts allowed before falling back",
        first=("tests/test_stall_fallback.py", "tests/test_breaker.py"),
    ),
    Mutation(
        name="stall_retried_before_the_next_route",
        bug_class="policy",
        file="lifecycle/_core/config.py",
        old="    stale_before_fallback: int | None = 1\n",
        new="    stale_before_fallback: int | None = None\n",
        why="the old default back: a stall retried on its route while a later one could answer",
        first=(
            "tests/test_stall_fallback.py",
            "tests/test_config.py",
            "tests/test_verdicts.py",
            "tests/test_stateful_core.py",
        ),
    ),
    Mutation(
        name="stall_on_the_last_route_not_retried",
        bug_class="policy",
        file="lifecycle/_core/policy.py",
        old="stale_on_route >= eager and has_next:",
        new="stale_on_route >= eager:",
        why="'a stall moves on' applied to the last route too, where nothing else can answer",
        first=("tests/test_stall_fallback.py", "tests/test_stateful_core.py"),
    ),
    # -- commit point and delivery -----------------------------------------------------------
    Mutation(
        name="cut_tool_call_with_whole_json_complete",
        bug_class="commit point",
        file="lifecycle/_core/message.py",
        old="if self.stop_reason is not None:\n                reason = _unusable_arguments(",
        new=(
            "if self.stop_reason is not None or arguments:\n"
            "                reason = _unusable_arguments("
        ),
        why="a tool call judged by whether its JSON parses, not by whether the provider stopped",
        first=("tests/test_message.py", "tests/test_delivery_cuts.py"),
    ),
    Mutation(
        name="fallback_after_output_without_restart",
        bug_class="delivery",
        file="lifecycle/_core/machine.py",
        old='if self.decision.kind in ("retry", "fallback") and self.committed:',
        new='if self.decision.kind == "retry" and self.committed:',
        why="only a retry was thought to re-deliver; a fallback's new model starts afresh",
        first=("tests/test_restart_event.py", "tests/test_delivery.py"),
    ),
    Mutation(
        name="continue_after_cut_tool_call",
        bug_class="delivery",
        file="lifecycle/_drivers/run_base.py",
        old=(
            "            and not message.tool_calls\n"
            "            and not message.incomplete_tool_calls\n"
        ),
        new="            and not message.tool_calls\n",
        why='on_partial="continue" checks finished tool calls only, so a cut one is continued',
        first=("tests/test_continue.py", "tests/test_delivery_cuts.py"),
    ),
    # -- breaker ------------------------------------------------------------------------------
    Mutation(
        name="caller_error_charged_to_breaker",
        bug_class="breaker",
        file="lifecycle/_health/route_health.py",
        old="if fault.retryable or fault.fallback_eligible:",
        new='if fault.retryable or fault.fallback_eligible or fault.outcome == "error":',
        why="every error status counted against the route, the caller's 400/413/422 too",
        first=("tests/test_verdicts.py", "tests/test_breaker.py"),
    ),
    Mutation(
        name="total_clock_charged_to_breaker",
        bug_class="breaker",
        file="lifecycle/_health/route_health.py",
        old='if outcome in ("deadline", "interrupted") or fault is None:',
        new='if outcome == "interrupted" or fault is None:',
        why="every stall charged to the route, the caller's own Timeouts.total too",
        first=("tests/test_verdicts.py", "tests/test_breaker.py"),
    ),
    Mutation(
        name="breaker_opens_one_failure_late",
        bug_class="breaker",
        file="lifecycle/_core/breaker.py",
        old="return core.failures >= core.policy.failures_to_open",
        new="return core.failures > core.policy.failures_to_open",
        why="failures_to_open read as failures tolerated",
        first=("tests/test_breaker.py", "tests/test_redis_health.py"),
    ),
    Mutation(
        name="recovery_keeps_cooldown_growth",
        bug_class="breaker",
        file="lifecycle/_core/breaker.py",
        old="    core.openings = 0\n",
        new="",
        why="closing resets the failure counts but forgets the openings the cooldown grows by",
        first=("tests/test_breaker.py", "tests/test_redis_health.py"),
    ),
    # -- socket finding -----------------------------------------------------------------------
    Mutation(
        name="reused_connection_not_claimed",
        bug_class="socket finding",
        file="providers/_sdk/sockets.py",
        old="if connection is not None and connection is not owner:",
        new="if connection is not None and owner is None:",
        why="only a fresh connection is attached; a pooled one keeps its first attempt",
        first=(
            "tests/test_sockets.py",
            "tests/test_pooled_connection.py",
            "tests/test_real_closes.py",
        ),
    ),
    Mutation(
        name="closed_stream_not_detached",
        bug_class="socket finding",
        file="providers/_sdk/sockets.py",
        old="    def close(self) -> None:\n        self.let_go()\n        self._inner.close()",
        new="    def close(self) -> None:\n        self._inner.close()",
        why="the sync stream's close leaves its socket attached, so an abort may hit a reused fd",
        first=(
            "tests/test_sockets.py",
            "tests/test_real_closes.py",
            "tests/test_pooled_connection.py",
        ),
    ),
    Mutation(
        name="response_close_keeps_the_socket",
        bug_class="socket finding",
        file="providers/_sdk/sockets.py",
        old="            self._network.read_to_body_end(body)\n        self._network.let_go()\n",
        new="            self._network.read_to_body_end(body)\n",
        why="a closed response's connection, back in the pool, stays the attempt's to abort",
        first=("tests/test_pooled_connection.py", "tests/test_sockets.py"),
    ),
    Mutation(
        name="connect_socket_attached_late",
        bug_class="socket finding",
        file="providers/_sdk/sockets.py",
        old="        sock = socket.socket(family, kind, proto)\n        connection.attach(sock)\n",
        new="        sock = socket.socket(family, kind, proto)\n",
        why="the socket attached when the request is written, not before its connect starts",
        first=("tests/test_connect_abort.py", "tests/test_sockets.py"),
    ),
    # -- diagnostics --------------------------------------------------------------------------
    Mutation(
        name="ttft_from_attempt_start",
        bug_class="diagnostics",
        file="lifecycle/_drivers/sync_run.py",
        old="diag.ttft = at - sent_at",
        new="diag.ttft = at - attempt.started_at",
        why="ttft measured from the attempt's start (client lease included), not the request",
        first=("tests/test_attempt_clocks.py", "tests/test_driver_policy.py"),
    ),
    Mutation(
        name="async_ttft_from_first_byte",
        bug_class="diagnostics",
        file="lifecycle/_drivers/async_run.py",
        old="diag.ttft = at - sent_at",
        new="diag.ttft = at - (connection.first_byte_at or sent_at)",
        why="ttft and ttfb confused: the first token timed from the first byte",
        first=("tests/test_driver_policy.py", "tests/test_otel.py"),
    ),
    Mutation(
        name="ttfb_from_attempt_start",
        bug_class="diagnostics",
        file="lifecycle/_drivers/run_base.py",
        old="diag.ttfb = connection.first_byte_at - connection.sent_at",
        new="diag.ttfb = connection.first_byte_at - attempt.started_at",
        why="ttfb measured from the attempt's start instead of the request sent",
        first=("tests/test_driver_policy.py", "tests/test_otel.py"),
    ),
    # -- secrets ------------------------------------------------------------------------------
    Mutation(
        name="echoed_api_key_header_mostly_kept",
        bug_class="secrets",
        file="lifecycle/_core/redaction.py",
        old=r'r"(?P<scheme>(?i:bearer|basic|token)\s+)?\S+"',
        new=r'r"(?P<scheme>(?i:bearer|basic|token)\s+)?\S{1,8}"',
        why="the header value's match bounded to a short prefix, so most of the key is kept",
        first=("tests/test_route_secrets.py", "tests/test_secrets.py"),
    ),
    Mutation(
        name="secret_pieces_not_overlapping",
        bug_class="secrets",
        file="lifecycle/_core/secrets.py",
        old="for i in range(len(secret) - MIN_PIECE + 1))",
        new="for i in range(0, len(secret) - MIN_PIECE + 1, MIN_PIECE))",
        why="secrets registered as consecutive chunks, not every window, to save memory",
        first=("tests/test_route_secrets.py", "tests/test_secrets.py"),
    ),
)

REQUIRED: Final = (
    "abort_closes_socket_on_watchdog_thread",
    "cut_tool_call_with_whole_json_complete",
    "caller_error_charged_to_breaker",
    "ttft_from_attempt_start",
    "echoed_api_key_header_mostly_kept",
    "cleanup_rebuilds_other_route",
    "first_token_clock_uses_stale",
    "fallback_after_output_without_restart",
    "retired_client_closed_under_other_runs",
)
"""Bugs the suite is being taught to catch: the catalogue must keep them."""


def by_name(name: str) -> Mutation:
    for mutation in CATALOGUE:
        if mutation.name == name:
            return mutation
    raise KeyError(name)
