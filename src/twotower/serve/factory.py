"""``uvicorn twotower.serve.factory:app --factory``: the app from the environment's settings."""

from __future__ import annotations

from fastapi import FastAPI

from twotower.serve.app import create_app
from twotower.settings import get_settings


def app() -> FastAPI:
    return create_app(get_settings())
