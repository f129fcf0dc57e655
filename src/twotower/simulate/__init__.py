"""The closed-loop simulator: users with planted tastes swipe through the real API (``twotower simulate``)."""

from twotower.simulate.oracle import Oracle
from twotower.simulate.run import SimulationConfig, Swipe, simulate, summarise

__all__ = ["Oracle", "SimulationConfig", "Swipe", "simulate", "summarise"]
