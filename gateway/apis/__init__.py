"""The generation APIs the gateway serves, one module each, on one request path (``proxy``).

Each API is a small object the proxy asks how to check and count a request, which backend
route can take it, what body to send there, and how to read usage and text back. Chat is
the reference; Responses and legacy completions ride the same parse → count → route →
forward → record steps.
"""
from .base import Api
from .chat import CHAT
from .completions import COMPLETIONS
from .responses import RESPONSES

__all__ = ["Api", "CHAT", "COMPLETIONS", "RESPONSES"]
