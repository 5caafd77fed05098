"""The HTTP edge: raw ASGI reads and writes, OpenAI-shaped errors, request limits and the
uvicorn protocol with header and body deadlines."""
from .errors import GatewayError

__all__ = ["GatewayError"]
