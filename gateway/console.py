"""`GET /`: the operator console, one self-contained HTML page (no build step, no CDN)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

__all__ = ["console_page"]


@cache
def _page() -> str:
    return files("gateway").joinpath("console.html").read_text(encoding="utf-8")


async def console_page(request: Request) -> Response:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})
