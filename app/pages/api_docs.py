"""The interactive API reference (`/api/docs`): Swagger UI, served from tunelab itself.

FastAPI's default page loads Swagger UI from a CDN and starts it with an inline script; the
page's Content-Security-Policy (`script-src 'self'`) rightly blocks both, which left it blank.
Here Swagger UI 5 (which reads FastAPI's OpenAPI 3.1) comes from the files the `fastapi-offline`
package ships, mounted at `SWAGGER_ASSETS_URL` by `app.main`, and its start-up script is a
static file.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.pages.templating import templates

SWAGGER_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
SWAGGER_ASSETS_URL = "/api/docs/assets"

router = APIRouter(include_in_schema=False)


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request):
    return templates.TemplateResponse(
        request, "api_docs.html", {"assets": SWAGGER_ASSETS_URL, "openapi_url": request.app.openapi_url}
    )
