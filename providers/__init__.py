"""Provider adapters for ``lifecycle``: one module per wire API, plus the loopback server.

- ``AnthropicMessages`` (``api_mode = "anthropic_messages"``): Messages API, ``anthropic`` SDK.
- ``OpenAIChatCompletions`` (``api_mode = "chat_completions"``): Chat Completions,
  ``openai`` SDK, for OpenAI and OpenAI-compatible servers.
- ``OpenAIResponses`` (``api_mode = "responses"``): the Responses API, ``openai`` SDK.
- ``providers.loopback``: a real HTTP server on 127.0.0.1 that replays recorded
  provider streams with scripted faults, for testing agents.
"""

from .anthropic_messages import AnthropicMessages
from .openai_chat_completions import OpenAIChatCompletions
from .openai_responses import OpenAIResponses

__all__ = ["AnthropicMessages", "OpenAIChatCompletions", "OpenAIResponses"]
