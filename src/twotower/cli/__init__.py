"""The ``twotower`` command line. Each stage of the data flow adds its commands in its own module."""

from twotower.cli.app import app, main

__all__ = ["app", "main"]
