"""Upstream backends; importing the package registers every type by its config name."""
from . import openai_api, sagemaker  # noqa: F401  (register)
from .base import Backend, UpstreamReply, UpstreamUnavailable, build_backend

__all__ = ["Backend", "UpstreamReply", "UpstreamUnavailable", "build_backend"]
