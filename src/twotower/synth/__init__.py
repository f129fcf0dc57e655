"""Synthetic catalogs and swipes with planted tastes: data with known answers, of any size, reproducibly."""

from twotower.synth.generator import EPOCH, SynthConfig, SynthResult, generate, validate

__all__ = ["EPOCH", "SynthConfig", "SynthResult", "generate", "validate"]
