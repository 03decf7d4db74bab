"""The API's routes, one module per resource; ``api.app.create_app`` includes ``ROUTERS`` in this order."""

from __future__ import annotations

from api.routes import audit, docs, exports, health, images, metrics, models, review, samples

ROUTERS = [module.router for module in (health, metrics, docs, samples, exports, images, review, models, audit)]
