"""The HTTP API: `bloodcell api` (or `uvicorn api.app:create_app --factory --no-proxy-headers`: `bloodcell api`
believes forwarded headers only from BLOODCELL_TRUSTED_PROXIES). OpenAPI docs at /docs (token needed).

Every route but /health and /health/ready needs a bearer token: those under /v1 and /metrics with the
scope named in their summary, the documentation (/docs, /openapi.json) any active token. The two health routes are
open so load balancers can probe them. The routes live in ``api/routes/``, one module per resource, and reach the
database only through ``clients.local.Client``; errors are answered by ``bloodcell_core.edge``'s one handler. The
review console for people (user accounts and session cookies, not tokens) is mounted under /ui from ``web/``.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.routes import ROUTERS
from bloodcell_core import __version__
from bloodcell_core.clients.local import Client
from bloodcell_core.config import Settings
from bloodcell_core.edge import install_error_handler
from bloodcell_core.service.ops_metrics import ServiceMetrics
from web.console import error_page, install_console


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    app = FastAPI(
        title="bloodcell",
        version=__version__,
        description="White-blood-cell classification for laboratory systems: submit a sample's cell images, "
        "read the differential, export FHIR R4 / HL7 v2, review and sign off. Tokens: "
        "`bloodcell tokens create NAME --scope submit --scope read`.",
        # FastAPI would serve these without a token: api/routes/docs.py serves them behind one
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.client = Client(settings)  # checks the database migration; sends tasks by name
    app.state.metrics = ServiceMetrics(settings)
    install_error_handler(app, error_page)  # JSON, but the console's page for a person under /ui
    install_console(app)  # the review console for people, under /ui (web/)
    for router in ROUTERS:
        app.include_router(router)
    return app
