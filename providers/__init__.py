"""Provider adapters for ``lifecycle``: one module per wire API, plus the loopback server.

- ``AnthropicMessages`` (``api_mode = "anthropic_messages"``): Messages API, ``anthropic`` SDK.
- ``OpenAIChatCompletions`` (``api_mode = "chat_completions"``): Chat Completions,
  ``openai`` SDK, for OpenAI and OpenAI-compatible servers.
- ``OpenAIResponses`` (``api_mode = "responses"``): the Responses API, ``openai`` SDK.
- ``providers.loopback``: a real HTTP server on 127.0.0.1 that replays recorded
  provider streams with scripted faults, for testing agents.

The adapters are imported on first use: each SDK costs seconds to import, and the CLI
(``lifecycle --help``, ``lifecycle serve``) and the loopback server need neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .anthropic_messages import AnthropicMessages
    from .openai_chat_completions import OpenAIChatCompletions
    from .openai_responses import OpenAIResponses

__all__ = ["AnthropicMessages", "OpenAIChatCompletions", "OpenAIResponses"]

_ADAPTER_MODULES = {
    "AnthropicMessages": ".anthropic_messages",
    "OpenAIChatCompletions": ".openai_chat_completions",
    "OpenAIResponses": ".openai_responses",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Hidden from mypy: a visible module __getattr__ would type every misspelt attribute of
# ``providers`` as Any; the TYPE_CHECKING imports above give the real types instead.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _ADAPTER_MODULES.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
