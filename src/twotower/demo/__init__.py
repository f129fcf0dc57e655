"""``twotower demo``: the whole pipeline with no configuration (``run``), its API (``api``) and output (``show``)."""

from twotower.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
