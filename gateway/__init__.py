"""Cost-aware OpenAI-compatible LLM gateway (see README)."""
__version__ = "0.1.0"
