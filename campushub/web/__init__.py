"""The reference web front end: the service hall (`/hall`), the steward desk (`/desk`) and the
public verification page (`/verify`). Static pages that talk to the GraphQL API like any other
client — they hold a bearer token and nothing else."""

from __future__ import annotations

import os
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = files(__name__).joinpath("static")
PAGES = {"hall": "hall.html", "desk": "desk.html", "verify": "verify.html"}


def _page(name: str) -> Route:
    async def serve(request: Request) -> HTMLResponse:
        html = STATIC.joinpath(PAGES[name]).read_text(encoding="utf-8")
        # The desk links into the Dagster UI; where it runs is the deployment's business.
        dagster = os.environ.get("CAMPUSHUB_DAGSTER_URL", "http://127.0.0.1:3000")
        html = html.replace("{{DAGSTER_URL}}", dagster)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    return Route(f"/{name}", serve, name=f"{name}_page")


# Scripts only from our own origin, no inline script: a value typed into a form can never run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def routes() -> list[BaseRoute]:
    async def home(_: Request) -> RedirectResponse:
        return RedirectResponse("/hall")

    return [
        Route("/", home),
        *(_page(name) for name in PAGES),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
