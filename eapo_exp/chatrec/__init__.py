"""ChatRec: zero-shot candidate ranking by a chat LLM behind an OpenAI-compatible endpoint."""

from eapo_exp.chatrec.endpoint import ChatEndpoint, ChatEndpointError

__all__ = ["ChatEndpoint", "ChatEndpointError"]
