"""The API's routes, one router per area; ``serve/app.py`` includes them in this order."""

from twotower.serve.routes import admin, console, decisions, experiment, health, pages, recommendations

__all__ = ["ROUTERS"]

ROUTERS = [
    recommendations.router,
    decisions.router,
    admin.router,
    experiment.router,
    health.router,
    console.router,
    pages.router,
]
