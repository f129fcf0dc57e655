"""The API's routes, one router per area; ``serve/app.py`` includes them in this order."""

from twotower.serve.routes import admin, decisions, health, recommendations

__all__ = ["ROUTERS"]

ROUTERS = [recommendations.router, decisions.router, admin.router, health.router]
