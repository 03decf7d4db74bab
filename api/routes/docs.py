"""The API's documentation behind a token: FastAPI would serve /docs and /openapi.json without one."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from api.deps import AnyCaller

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi_schema(request: Request, _: AnyCaller) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def swagger_ui(request: Request, _: AnyCaller) -> HTMLResponse:
    # The page needs the token too, so a plain browser gets 401: open it through something that adds
    # the Authorization header (curl -o, a proxy, a header extension). The schema is embedded in the
    # page, because the page's own request for /openapi.json would carry no token.
    spec = request.app.openapi()
    return get_swagger_ui_html(openapi_url="/openapi.json", title="bloodcell API", swagger_ui_parameters={"spec": spec})
