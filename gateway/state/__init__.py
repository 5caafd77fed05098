"""Live state stores, chosen by config: in-process, or Redis shared by every replica."""
from . import memory  # noqa: F401  (register)
from .base import StateStore, build_store

__all__ = ["StateStore", "build_store"]
