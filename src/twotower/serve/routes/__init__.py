"""The API's routes, one router per area; ``serve/app.py`` includes them in this order."""

from twotower.serve.routes import admin, console, decisions, health, pages, recommendations

__all__ = ["ROUTERS"]

ROUTERS = [recommendations.router, decisions.router, admin.router, health.router, console.router, pages.router]
