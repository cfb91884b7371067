"""Who may open the console: the admin keys, checked on every console route and its streams.

The console is guarded whenever an admin key is configured (`--admin-key KEY`, $INGATE_ADMIN_KEYS,
or `admin: true` on a keys-file entry), and `ingate serve` refuses `--console` with API keys but
no admin key: a server that asks its clients for keys does not show its governance to anyone.
Without any key (auth off, as for the API) the console is open, as the API is.

A browser cannot put a key in an `Authorization` header for a page or an EventSource, so the
sign-in form trades the key for a cookie: `<key id>.<expiry>.<HMAC of both under a secret this
process drew at start>`. The cookie holds no key and nothing a keys file holds (a `key_sha256`
entry publishes the digest), it lasts `TOKEN_S` and dies with the process: after a restart, or on
another replica, sign in again. It is HttpOnly and SameSite=Strict, and has no Path, so the browser
scopes it to the console's own path, under whatever prefix a reverse proxy adds. Scripts and
tools may send `Authorization: Bearer <admin key>` instead.

Every POST also needs the header `X-Ingate-Console: 1` (the console's script sends it): a page
on another site can make a browser post a form, never with a custom header.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ingate.api.openai import ApiError
from ingate.keys import Grant, Keys

COOKIE = "ingate_console"
TOKEN_S = 8 * 3600
CSRF_HEADER = "x-ingate-console"
HEADERS = {  # on every console response: nothing is loaded from elsewhere, nothing embeds the console
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Unauthorized(Exception):
    """No valid admin key: a 401 (the sign-in page for a browser, JSON for a script)."""

    def __init__(self, message: str = "this console needs an admin key"):
        super().__init__(message)
        self.message = message


class Guard:
    """The admin keys of one server, and the secret its cookies are signed with."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self.secret = secrets.token_bytes(32)

    @property
    def on(self) -> bool:
        return bool(self.keys.admins)

    def token(self, grant: Grant, now: float | None = None) -> str:
        exp = int((now or time.time()) + TOKEN_S)
        body = f"{grant.key_id}.{exp}"
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode("utf-8"), hashlib.sha256).hexdigest()

    def from_token(self, token: str) -> Grant | None:
        parts = token.rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        kid, exp, sig = parts
        if not hmac.compare_digest(sig, self._sign(f"{kid}.{exp}")) or int(exp) < time.time():
            return None
        return self.keys.admin_by_id(kid)

    def grant(self, request: Request) -> Grant | None:
        """The admin behind a request: a bearer admin key, or a valid cookie. Grant() when the console
        is open (no admin key configured); None when it is guarded and neither is valid."""
        if not self.on:
            return Grant()
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.keys.lookup_admin(header[7:].strip())
        token = request.cookies.get(COOKIE)
        return self.from_token(token) if token else None


def require(guard: Guard, request: Request) -> Grant:
    """The admin's grant, or Unauthorized; and a POST without the console's header is a 403."""
    grant = guard.grant(request)
    if grant is None:
        raise Unauthorized()
    if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(403, "a console POST needs the header 'X-Ingate-Console: 1' (the console's page sends it)",
                       code="console_header_missing", type_="permission_error")
    return grant


async def login(guard: Guard, request: Request) -> Response:
    """The sign-in form's POST (form-encoded `key`), or a script's JSON {"key": ...}: a cookie and
    back to the console, or the form again with a 401."""
    raw = await request.body()
    if len(raw) > 4096:
        raise ApiError(413, "a sign-in body is a key: at most 4096 bytes")
    key = _key_in(raw, request.headers.get("content-type", ""))
    grant = guard.keys.lookup_admin(key) if key and guard.on else (Grant() if not guard.on else None)
    wants_json = "application/json" in request.headers.get("content-type", "")
    if grant is None:
        import asyncio

        await asyncio.sleep(0.5)  # a guess costs time
        return unauthorized(request, "that is not an admin key of this server")
    resp: Response = (JSONResponse({"ok": True, "key_id": grant.key_id}, headers=HEADERS) if wants_json else
                      Response(status_code=303, headers={**HEADERS, "Location": "./"}))
    if guard.on:
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        resp.set_cookie(COOKIE, guard.token(grant), max_age=TOKEN_S, httponly=True, samesite="strict",
                        secure=secure, path=None)  # no Path: the browser scopes it to the console's own path
    return resp


def logout() -> Response:
    resp = Response(status_code=303, headers={**HEADERS, "Location": "./"})
    resp.set_cookie(COOKIE, "", max_age=0, expires=0, httponly=True, samesite="strict", path=None)
    return resp


def _key_in(raw: bytes, content_type: str) -> str:
    text = raw.decode("utf-8", errors="replace")
    if "application/json" in content_type:
        import json

        try:
            data = json.loads(text)
        except ValueError:
            return ""
        return data.get("key", "") if isinstance(data, dict) and isinstance(data.get("key"), str) else ""
    return (parse_qs(text).get("key") or [""])[0]


def unauthorized(request: Request, message: str = "") -> Response:
    """401: the sign-in page for a browser's navigation, JSON for the console's script and tools."""
    headers = {**HEADERS, "WWW-Authenticate": 'Bearer realm="ingate console"'}
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": {"message": message or "this console needs an admin key: sign in at the "
                                       "console's page, or send 'Authorization: Bearer <admin key>'",
                                       "type": "authentication_error", "param": None, "code": "console_admin_key"}},
                            status_code=401, headers=headers)
    return HTMLResponse(sign_in_page(_login_action(request.url.path), message), status_code=401, headers=headers)


def _login_action(path: str) -> str:
    """The sign-in form's action, relative to the page that shows it: the console may sit under any
    prefix a reverse proxy adds, so no URL the console writes is absolute."""
    rest = path.split("/console", 1)[1] if "/console" in path else "/"
    if not rest:
        return "console/login"
    return "../" * (rest.count("/") - 1) + "login"


def sign_in_page(action: str, message: str = "") -> str:
    error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ingate console: sign in</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; background: #f5f6f8; color: #1d2330; margin: 0; }}
main {{ max-width: 26rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px #0002; }}
h1 {{ font-size: 1.3rem; margin: 0 0 .5rem; }} label {{ display: block; margin: 1rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font: inherit; }}
button {{ margin-top: 1rem; padding: .5rem 1.2rem; font: inherit; background: #2f5bea; color: #fff; border: 0;
         border-radius: 4px; cursor: pointer; }} .error {{ color: #b3261e; }}
</style></head>
<body><main>
<h1>ingate console</h1>
<p>This server's console needs an admin key (<code>--admin-key</code>, or a keys-file entry with
<code>admin: true</code>).</p>
{error}
<form method="post" action="{html.escape(action)}">
<label for="key">Admin key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Open the console</button>
</form>
</main></body></html>
"""
