"""Jinja2 templates, with what every page needs in its context."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from app.api.deps import csrf_token

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"


def _page_context(request: Request) -> dict:
    return {"csrf_token": csrf_token(request)}


templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[_page_context])
