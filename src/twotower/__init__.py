"""twotower: a two-tower recommendation engine for swipe-style video apps, on PostgreSQL + pgvector."""

__version__ = "0.1.0"
__all__ = ["__version__"]
