"""The console in a real browser: Debian's Chromium, headless, driven by Selenium, against a real
`ingate serve --console` on the embedded model, reached through a reverse proxy that puts it under
/ingate/ (tests/prefix_proxy.py) and straight on loopback.

What the model writes differs between CPUs, so the prompt is run at a sampling setting where the
ungoverned model repeats the phone number (conftest's `phone_run`, searched as `runs_where` does):
there is something to redact, or the test fails. The screenshots taken here are the docs'
pictures (docs/img/console-*.png, shown by docs/console.md and the README).

`make browser` installs Chromium and its driver from Debian's packages; `make test` runs it first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import INGATE, PHONE, PII_PROMPT, ROOT, api_sampling
from prefix_proxy import Threaded, free_port, prefix_proxy

pytestmark = pytest.mark.slow

ADMIN = "admin-key-of-the-console-tests-7f3a9c"
CLIENT = "client-key-of-the-console-tests-2b81"
KEPT = """version: 1
name: kept
audit: {store_text: true}
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: redact
"""
CHROMIUM = Path(os.environ.get("INGATE_CHROMIUM") or "/usr/bin/chromium")  # Debian's, as `make browser` installs
CHROMEDRIVER = Path(os.environ.get("INGATE_CHROMEDRIVER") or "/usr/bin/chromedriver")
# as root, on a machine with no outside network: no sandbox, and nothing that phones home
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1360,900"]
IMG = ROOT / "docs" / "img"
WIDTH = 1360


class Served:
    """`ingate serve --console` in a process of its own, on a free port."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit = tmp / "audit.sqlite3"
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen([INGATE, "serve", "--port", str(self.port), "--console", *args],
                                     env=dict(os.environ, INGATE_AUDIT=str(self.audit)), stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"ingate serve --console did not start: {(tmp / 'serve.log').read_text()}")

    def ask(self, params, policy: str, session: str | None = None) -> dict:
        """One API request from a client (the client's key, not the admin's)."""
        headers = {"Authorization": f"Bearer {CLIENT}"} | ({"X-Session-Id": session} if session else {})
        r = httpx.post(self.url + "/v1/chat/completions", headers=headers, timeout=120,
                       json={"messages": [{"role": "user", "content": PII_PROMPT}], "policy": policy,
                             **api_sampling(params)})
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "kept.yaml").write_text(KEPT)
    s = Served(tmp, "--policy", "default", "--policy", str(tmp / "kept.yaml"), "--api-key", CLIENT,
               "--admin-key", ADMIN, "--max-tokens-cap", "256")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxied(served):
    """The server under /ingate/, behind a reverse proxy."""
    p = Threaded(prefix_proxy(served.url, "/ingate/"))
    yield p.url + "/ingate"
    p.stop()


@pytest.fixture(scope="module")
def chrome():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: the console's tests drive Debian's Chromium; `make browser` "
                    "installs it (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='ingate-chromium-')}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_window_size(WIDTH, 900)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console(chrome, proxied):
    """The console's page through the proxy, signed in with the admin key."""
    chrome.get(proxied + "/console")
    sign_in(chrome, ADMIN)
    assert chrome.current_url == proxied + "/console/"
    return proxied


# ---- helpers -------------------------------------------------------------------------------------

def wait_for(what: str, cond, timeout: float = 90.0):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := cond():
                return value
        except (NoSuchElementException, StaleElementReferenceException, AssertionError):
            pass  # not on the page yet (`one` asserts that it is): the page is still rendering
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:g} s for {what}")


def css(chrome, selector: str):
    from selenium.webdriver.common.by import By

    return chrome.find_elements(By.CSS_SELECTOR, selector)


def one(chrome, selector: str):
    found = css(chrome, selector)
    assert found, f"nothing on the page matches {selector}"
    return found[0]


def body(chrome, attr: str) -> str:
    return one(chrome, "body").get_attribute(f"data-{attr}") or ""


def sign_in(chrome, key: str) -> None:
    assert "sign in" in chrome.title, chrome.title
    one(chrome, "#key").send_keys(key)
    one(chrome, "form button").click()
    wait_for("the console to start", lambda: body(chrome, "ready") == "1", 30)


def view(chrome, name: str) -> None:
    one(chrome, f"#tabs a[data-view='{name}']").click()
    wait_for(f"the {name} view", lambda: body(chrome, "view") == name, 10)


def fill(chrome, selector: str, value) -> None:
    el = one(chrome, selector)
    el.clear()
    el.send_keys(str(value))


def play(chrome, params, policy: str = "default", compare: bool = False) -> None:
    """Run PII_PROMPT in the playground at `params`' sampling and wait for it to end."""
    from selenium.webdriver.support.ui import Select

    view(chrome, "playground")
    Select(one(chrome, "#play-policy")).select_by_value(policy)
    fill(chrome, "#play-temperature", params.sampling.temperature)
    fill(chrome, "#play-seed", params.sampling.seed)
    fill(chrome, "#play-max-tokens", params.max_tokens)
    fill(chrome, "#play-prompt", PII_PROMPT)
    box = one(chrome, "#play-compare")
    if box.is_selected() != compare:
        box.click()
    runs = int(body(chrome, "play-runs") or 0)
    one(chrome, "#play-run").click()
    wait_for("the playground's run to end", lambda: int(body(chrome, "play-runs") or 0) > runs, 120)
    status = one(chrome, "#play-status").text
    assert status == "done", status


def withheld(text: str) -> list[str]:
    """What the gate withheld from `text` under the PII pack: the prompt's values the model wrote."""
    return [v for v in (PHONE, "john.smith@example.com") if v in text]


def assert_never_shown(chrome, values: list[str]) -> None:
    """No 6-character piece of any withheld value anywhere the page shows or holds: its markup and
    attributes (tooltips), its text, and every field's value except the prompt the test typed."""
    page = chrome.page_source
    text = chrome.execute_script("return document.body.innerText")
    fields = chrome.execute_script("return [...document.querySelectorAll('input, textarea, select')]"
                                   ".filter(e => e.id !== 'play-prompt').map(e => e.value).join('\\n')")
    for v in values:
        for piece in {v[i:i + 6] for i in range(len(v) - 5)}:
            for where, shown in (("the page's markup", page), ("the page's text", text), ("a field", fields)):
                assert piece not in shown, f"{where} shows {piece!r} of the withheld {v!r}"


def shot(chrome, name: str) -> None:
    """A picture of the whole page for the docs (docs/img/NAME), through the DevTools protocol: the
    viewport made as tall as the page, then captured."""
    import base64

    chrome.execute_script("window.scrollTo(0, 0)")
    height = chrome.execute_script("return document.documentElement.scrollHeight")
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": min(height, 3000),
                                                                  "deviceScaleFactor": 1, "mobile": False})
    try:
        time.sleep(0.3)  # the layout settles at the new size
        png = chrome.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"]
    finally:
        chrome.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    IMG.mkdir(parents=True, exist_ok=True)
    (IMG / name).write_bytes(base64.b64decode(png))


# ---- the tests -------------------------------------------------------------------------------------

def console_routes() -> list[tuple[str, str]]:
    """Every console route and static file (read from the router, so a new route is checked too)."""
    from ingate.console.routes import STATIC, router

    out = [(m, r.path.replace("{name:path}", "console.js")) for r in router.routes for m in sorted(r.methods)
           if m != "HEAD"]
    return out + [("GET", f"/console/static/{p.relative_to(STATIC)}") for p in sorted(STATIC.rglob("*"))
                  if p.is_file()]


def test_every_console_route_and_its_streams_need_the_admin_key(served):
    routes = console_routes()
    assert ("GET", "/console/api/decisions") in routes and ("POST", "/console/api/playground") in routes
    forged = "admin-0123456789." + str(int(time.time()) + 3600) + "." + "0" * 64
    without = [{}, {"Authorization": f"Bearer {CLIENT}"}, {"Authorization": "Bearer wrong"},
               {"Cookie": f"ingate_console={forged}"}]
    def status(method: str, path: str, headers: dict) -> tuple[int, str]:
        with http.stream(method, path, headers=headers, json={}) as r:  # a stream is closed unread
            return r.status_code, r.read().decode() if r.status_code != 200 else ""

    with httpx.Client(base_url=served.url, timeout=30) as http:
        for method, path in routes:
            for headers in without:
                code, _ = status(method, path, headers | {"X-Ingate-Console": "1"})
                assert code == 401, f"{method} {path} with {headers or 'no key'}: {code}"
            code, text = status(method, path, {"Authorization": f"Bearer {ADMIN}"})
            assert code != 401, f"{method} {path} refuses the admin key"
            if method == "POST":
                assert code == 403 and "X-Ingate-Console" in text, (path, text)
        page = http.get("/console/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'action="login"' in page.text  # a browser gets the sign-in form
        assert http.post("/console/login", data={"key": CLIENT}).status_code == 401  # an API key opens nothing
        # the admin key is the console's only: the API does not take it
        r = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN}"},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert r.status_code == 401
        # the ungoverned side would show what the gate withheld: this server shows no client that
        r = http.post("/console/api/playground", headers={"Authorization": f"Bearer {ADMIN}", "X-Ingate-Console": "1"},
                      json={"prompt": "hi", "ungoverned": True, "max_tokens": 1})
        assert r.status_code == 403 and r.json()["error"]["code"] == "needs_full_detail"


def test_the_playground_highlights_the_redacted_span_with_its_rule(console, chrome, phone_run):
    params, ungoverned = phone_run
    assert not one(chrome, "#play-compare").is_enabled()  # minimal detail: no ungoverned side
    play(chrome, params)
    marks = css(chrome, "#out-governed mark.redacted[data-rule='pii']")
    assert marks, f"no redaction highlighted in: {one(chrome, '#out-governed').text!r}"
    assert any(m.text.startswith("[PHONE]") for m in marks), [m.text for m in marks]
    assert all(m.find_element("css selector", "sup.rule").text == "pii" for m in marks)
    row = one(chrome, "#decisions-governed tr[data-rule='pii'][data-action='redact']")
    assert "redacted one phone" in row.text
    assert one(chrome, "#finish-governed").text in ("stop", "length")
    assert len(css(chrome, "#out-governed span.tok")) > 0  # each token coloured by its entropy
    assert_never_shown(chrome, withheld(ungoverned.text))
    shot(chrome, "console-playground.png")


def test_live_decisions_receive_the_decision(console, chrome, served, phone_run):
    from selenium.webdriver.support.ui import Select

    from ingate.keys import derived_id

    params, ungoverned = phone_run
    rid = one(chrome, "#out-governed").get_attribute("data-request")
    assert rid, "the playground ran first: its request id is on its output"
    pool = ThreadPoolExecutor(2)  # two API clients meanwhile, under both policies, in session alice
    clients = [pool.submit(served.ask, params, p, "alice") for p in ("kept", "default")]
    view(chrome, "live")
    row = f"#live-table tr[data-request='{rid}'][data-rule='pii'][data-action='redact']"
    wait_for("the playground's decision in the live view", lambda: css(chrome, row), 30)
    admin_id = json.loads(chrome.execute_script("return JSON.stringify(IG.info)"))["key_id"]
    wait_for("its request's key", lambda: admin_id in one(chrome, row).text, 30)
    for f in clients:
        f.result(120)  # an API error fails the test here
    pool.shutdown()
    client_id = derived_id(CLIENT)
    wait_for("the client's requests", lambda: css(chrome, f"#live-key option[value='{client_id}']"), 30)
    Select(one(chrome, "#live-key")).select_by_value(client_id)  # filter by key: the playground's row goes
    wait_for("the key filter", lambda: not css(chrome, row) and css(chrome, "#live-table tr[data-policy='kept']"), 10)
    assert all(client_id in r.text and "alice" in r.text for r in css(chrome, "#live-table tbody tr"))
    Select(one(chrome, "#live-key")).select_by_value("")
    wait_for("every row again", lambda: css(chrome, row), 10)
    assert one(chrome, "#live-counts .chip[data-rule='pii'][data-action='redact']")
    # the kept policy stores the matched text in the audit; at minimal detail the console shows none of
    # it, and its stream does not carry it either
    assert_never_shown(chrome, withheld(ungoverned.text))
    sent = ""
    with httpx.stream("GET", served.url + "/console/api/decisions", headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=30) as r:
        for line in r.iter_lines():
            sent += line + "\n"
            if line == "event: live":
                break
    assert sent.count("event: decision") >= 3
    for v in withheld(ungoverned.text):
        assert not any(v[i:i + 6] in sent for i in range(len(v) - 5)), f"the live stream carries {v!r}"
    shot(chrome, "console-live.png")


def test_performance_charts_the_numbers_metrics_exports(console, chrome, served, phone_run):
    view(chrome, "perf")
    polls = int(body(chrome, "perf-polls") or 0)
    wait_for("two more polls", lambda: int(body(chrome, "perf-polls") or 0) >= polls + 2, 20)
    pool = ThreadPoolExecutor(1)
    asking = pool.submit(served.ask, phone_run[0], "default")

    def values(card: str) -> list:
        return json.loads(one(chrome, f"#value-{card}").get_attribute("data-values") or "[]")

    wait_for("tokens/s to move with a request", lambda: (values("tokens") or [0])[0], 60)
    asking.result(120)
    pool.shutdown()
    metrics = httpx.get(served.url + "/metrics").text
    restarts = float(re.search(r"^ingate_engine_restarts_total (\S+)$", metrics, re.M).group(1))
    assert values("restarts") == [restarts]
    wait_for("gate µs p50 and p99", lambda: all(v is not None and v > 0 for v in values("gate")), 20)
    assert values("ttft")[0] is not None and values("ttft")[0] > 0
    assert len(css(chrome, "#perf-cards .card canvas")) >= 8  # uPlot's charts
    shot(chrome, "console-performance.png")


def test_the_policy_lab_prints_ingate_check_and_counts_what_a_policy_would_block(console, chrome, served, phone_run,
                                                                                 tmp_path):
    served.ask(phone_run[0], "kept")  # one kept response for the traffic sample
    view(chrome, "lab")
    assert not one(chrome, "#lab-source option[value='default']").is_enabled()  # minimal: paste, do not peek
    # upload a policy: the page's example, renamed
    uploaded = tmp_path / "uploaded.yaml"
    uploaded.write_text(one(chrome, "#lab-policy-yaml").get_attribute("value").replace("name: trial", "name: uploaded"))
    one(chrome, "#lab-upload").send_keys(str(uploaded))
    wait_for("the uploaded policy", lambda: "name: uploaded" in one(chrome, "#lab-policy-yaml").get_attribute("value"))
    text = one(chrome, "#lab-text").get_attribute("value")
    one(chrome, "#lab-check").click()
    report = wait_for("the check's report", lambda: "match:" in one(chrome, "#lab-report").text and
                      one(chrome, "#lab-report").text, 30)
    cli = subprocess.run([INGATE, "check", uploaded.name, "--text", text], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    want = cli.stdout.replace(f"({uploaded.name})", "(<console>)").rstrip("\n").split("\n")
    assert [line.rstrip() for line in report.split("\n")] == [line.rstrip() for line in want]
    assert report.startswith("policy 'uploaded' (<console>): valid")

    one(chrome, "input[name='lab-sample'][value='traffic']").click()
    one(chrome, "#lab-run").click()
    wait_for("the traffic sample", lambda: "kept" in one(chrome, "#lab-rows tbody").text, 30)
    one(chrome, "input[name='lab-sample'][value='list']").click()
    one(chrome, "#lab-run").click()
    rows = wait_for("the pasted list's outcomes", lambda: [r for r in css(chrome, "#lab-rows tbody tr")
                                                           if r.text.startswith("line")], 30)
    assert [r.get_attribute("data-outcome") for r in rows] == ["passes", "redacted", "blocked", "passes"]
    assert one(chrome, "#lab-blocked").text.startswith("25% blocked (1 of 4)")
    shot(chrome, "console-lab.png")


def test_on_loopback_the_console_signs_in_and_out(chrome, served):
    chrome.get(served.url + "/console/")  # another origin than the proxy's: its own cookie
    assert "sign in" in chrome.title
    one(chrome, "#key").send_keys("not the key")
    one(chrome, "form button").click()
    wait_for("the refusal", lambda: "not an admin key" in one(chrome, ".error").text, 10)
    sign_in(chrome, ADMIN)
    assert chrome.current_url == served.url + "/console/"
    wait_for("the sign-out button", lambda: css(chrome, "#logout button"), 10)[0].click()
    wait_for("the sign-in form again", lambda: "sign in" in chrome.title, 10)


@pytest.fixture(scope="module")
def full_console(runtime):
    """The console of a server that shows full governance detail: the app in this process, over the
    runtime conftest loaded (no keys: open on loopback)."""
    from ingate.policy import load_policy
    from ingate.runtime import LocalCore
    from ingate.server import ServerConfig, create_app

    class Borrowed(LocalCore):
        def close(self) -> None:  # the runtime is the session's
            pass

    app = create_app(Borrowed(runtime), ServerConfig(policies={"default": load_policy(None)},
                                                     governance_detail="full", console=True))
    server = Threaded(app)
    yield server.url
    server.stop()


def test_side_by_side_at_full_detail_shows_what_the_gate_withheld(chrome, full_console, phone_run):
    params, ungoverned = phone_run
    chrome.get(full_console + "/console/")
    wait_for("the open console", lambda: body(chrome, "ready") == "1", 30)
    play(chrome, params, compare=True)
    assert PHONE in one(chrome, "#out-ungoverned").text
    assert PHONE not in one(chrome, "#out-governed").text
    assert css(chrome, "#out-governed mark.redacted[data-rule='pii']")
    assert "internal: phone replaced by [PHONE]" in one(chrome, "#decisions-governed").text
    shot(chrome, "console-compare.png")


def test_without_console_there_is_no_console(runtime):
    from fastapi.testclient import TestClient

    from ingate.policy import load_policy
    from ingate.runtime import LocalCore
    from ingate.server import ServerConfig, create_app

    app = create_app(LocalCore(runtime), ServerConfig(policies={"default": load_policy(None)}))
    assert TestClient(app).get("/console/").status_code == 404  # no lifespan: the runtime stays open
