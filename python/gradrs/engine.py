"""``from gradrs.engine import Value`` mirrors ``from micrograd.engine import Value``."""

from gradrs._core import Value

__all__ = ["Value"]
