"""The console: what governance does, in a browser, at /console (`ingate serve --console`).

Four views over one server: the playground (a run watched decision by decision, beside the same
run ungoverned where the server shows withheld text), live decisions (the audit, followed),
performance (the /metrics registry, charted) and the policy lab (`ingate check --text`, and a
policy tried on many texts). A static page (static/: HTML, CSS, JavaScript and the vendored uPlot)
talks to the routes of `ingate.console.routes`; nothing is fetched from elsewhere.

Who may open it is `ingate.console.auth`; what it shows of governance is what a client of the
server sees (`ingate.report`, at the server's --governance-detail). docs/console.md is the guide.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response


def mount(app: FastAPI) -> None:
    """Serve the console on `app` (made by `ingate.server.create_app`): its routes, its guard, and
    its traffic sample, fed by every model's worker."""
    from ingate.console import auth
    from ingate.console.routes import Console, open_router, router

    console = Console.of(app.state.server)
    app.state.console = console
    for name, b in console.server.backends.items():
        b.worker.observers.append(console.traffic.observer(name))

    async def unauthorized(request: Request, exc: Exception) -> Response:
        return auth.unauthorized(request, str(exc) if not isinstance(exc, auth.Unauthorized) else "")

    app.exception_handler(auth.Unauthorized)(unauthorized)
    app.include_router(open_router)
    app.include_router(router)
