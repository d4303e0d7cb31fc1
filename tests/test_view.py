"""`factory view`: a real headless chromium filters, opens a pair's diff and marks a row
excluded; `build --from V --exclude-marked` makes the new version. Without a browser: bad
input (unknown version, empty version, older schema, port in use) and viewing never writes."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import duckdb
import pytest

from factory import view
from factory.curate import derive, diff_lines
from factory.store import Store
from nanocode.common import InputError
from tests.conftest import BIN, REPO
from tests.test_factory_build import config_file, quiet_build

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One small offline version: four coding seeds (some need revising: pairs), one editing
    a starting workspace, one with no code (a reject at convert)."""
    tmp = tmp_path_factory.mktemp("view")
    rows = [json.loads(line) for line in (REPO / "factory/seeds/coding.jsonl").read_text().splitlines()]
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows[:4] + [r for r in rows if r["id"] in ("celsius", "no_code")]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCODE_HOME", str(tmp / "home"))
        summary = quiet_build(config=config_file(tmp, seeds))
    assert summary["version"] == 1 and summary["rejects"] == 1 and summary["pairs"] >= 1
    return tmp / "home"


def _digest(path: Path) -> tuple:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_viewing_never_writes_the_store(home):
    db = home / "factory.duckdb"
    before = _digest(db), sorted(p.name for p in home.iterdir())
    client = view.create_app(home).test_client()
    html = client.get("/v/1/rows").get_data(as_text=True)
    row_id = html.split('href="/v/1/row/')[1].split('"')[0]
    reject_id = client.get("/v/1/rows?status=rejected").get_data(as_text=True).split('href="/v/1/row/')[1].split('"')[0]
    assert reject_id.startswith("reject:")
    pair_id = client.get("/v/1/pairs").get_data(as_text=True).split('href="/v/1/pair/')[1].split('"')[0]
    for url in ("/", "/v/1", "/v/1/rows?status=rejected&q=code", "/v/1/rows?score_min=0.5&calls_min=1&tokens_max=9999",
                f"/v/1/row/{row_id}", f"/v/1/row/{reject_id}", "/v/1/pairs", f"/v/1/pair/{pair_id}"):
        assert client.get(url).status_code == 200, url
    refused = client.post("/v/1/exclude", data={"row_id": row_id, "note": "x"})
    assert refused.status_code == 403 and "--curate" in refused.get_data(as_text=True)
    assert (_digest(db), sorted(p.name for p in home.iterdir())) == before  # no write, no WAL left behind


def test_unknown_version_row_and_bad_filter_say_so(home):
    client = view.create_app(home).test_client()
    page = client.get("/v/42/rows")
    assert page.status_code == 404 and "has no version 42 (versions: 1" in page.get_data(as_text=True)
    assert client.get("/v/1/row/nope").status_code == 404
    assert "is not a number" in client.get("/v/1/rows?calls_min=many").get_data(as_text=True)


def test_empty_version_page_says_it_is_empty(tmp_path, monkeypatch):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text((REPO / "factory/seeds/coding.jsonl").read_text().splitlines()[15] + "\n")  # has a workspace
    v = quiet_build(config=config_file(tmp_path, seeds), limit=0)["version"]
    client = view.create_app(os.environ["NANOCODE_HOME"]).test_client()
    assert "has no rows" in client.get(f"/v/{v}").get_data(as_text=True)
    assert "this version is empty" in client.get(f"/v/{v}/rows").get_data(as_text=True)


def test_older_schema_names_what_is_missing(tmp_path):
    home = tmp_path / "old"
    home.mkdir()
    with duckdb.connect(str(home / "factory.duckdb")) as db:  # a catalog from before summaries and parts
        db.execute("CREATE TABLE versions (version INTEGER, status VARCHAR, created TIMESTAMP)")
    page = view.create_app(home).test_client().get("/")
    text = page.get_data(as_text=True)
    assert page.status_code == 500 and "older factory" in text
    assert "table parts" in text and "column versions.summary" in text and "table ledger" in text


def test_port_in_use_is_a_clear_error(home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"127.0.0.1:{port}.*--port"):
            view.server(home, port)
        out = subprocess.run([str(BIN / "factory"), "view", "--port", str(port)], capture_output=True, text=True,
                             env={**os.environ, "NANOCODE_HOME": str(home)}, timeout=60)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no /usr/bin/chromium + /usr/bin/chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def test_browser_filter_pair_diff_mark_and_derive(home, browser, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    srv = view.server(home, 0, curate=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    find, finds = browser.find_element, browser.find_elements

    def follow(by, what):
        """Click something that loads a page, and wait until the old page is gone (no stale reads)."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        old = find(By.TAG_NAME, "html")
        find(by, what).click()
        WebDriverWait(browser, 10).until(expected_conditions.staleness_of(old))

    try:
        browser.get(base + "/")
        follow(By.LINK_TEXT, "1")
        assert "pass rate by source" in browser.page_source and len(finds(By.CSS_SELECTOR, "figure svg")) == 5
        browser.get(base + "/v/1/rows")
        Select(find(By.ID, "status")).select_by_visible_text("rejected")
        follow(By.ID, "apply")
        rows = finds(By.CSS_SELECTOR, "#rows tr.row")
        assert [r.get_attribute("class").split()[1] for r in rows] == ["rejected"]
        assert "no fenced code block" in rows[0].text

        follow(By.LINK_TEXT, "pairs")
        follow(By.CSS_SELECTOR, "a.open-pair")
        assert finds(By.CSS_SELECTOR, "#diff del") and finds(By.CSS_SELECTOR, "#diff ins")
        assert find(By.ID, "decision").text and find(By.ID, "scores").text

        follow(By.PARTIAL_LINK_TEXT, "the chosen rollout as an sft row")
        assert finds(By.CSS_SELECTOR, ".card.call") and find(By.ID, "provenance")
        row_id = browser.current_url.rsplit("/", 1)[1]
        find(By.ID, "note").send_keys("too easy to teach anything")
        follow(By.ID, "exclude")
        assert find(By.ID, "excluded").text == "excluded"

        before = Store(home, read_only=True)
        n_before = before.figures(1)["sft rows"]
        before.db.close()
        monkeypatch.setenv("NANOCODE_HOME", str(home))
        from rich.console import Console
        new = derive(1, console=Console(file=open(os.devnull, "w")))
        assert (new["from version"], new["excluded"], new["excluded ids"], new["sft rows"]) == (1, 1, [row_id], n_before - 1)

        browser.get(base + "/")
        cells = {r.find_element(By.CSS_SELECTOR, "td a").text: r.find_element(By.CSS_SELECTOR, ".sft-count").text
                 for r in finds(By.CSS_SELECTOR, "tr.version-row")}
        assert cells["1"] == str(n_before) and cells[str(new["version"])] == str(n_before - 1)
        assert "v1 minus 1" in browser.page_source
        store = Store(home, read_only=True)
        lines = diff_lines(store, 1, new["version"])
        store.db.close()
        assert lines[0] == f"version {new['version']} is version 1 minus 1 marked row(s)"
        assert "too easy to teach anything" in "\n".join(lines)
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_marking_needs_this_servers_token_and_origin(home, tmp_path):
    # another site open in the same browser can post the form, but cannot know the token
    shutil.copytree(home, tmp_path / "home")
    store = Store(tmp_path / "home")
    store.db.execute("DELETE FROM exclusions")  # the browser test may have marked a row in `home`
    store.close()
    client = view.create_app(tmp_path / "home", curate=True).test_client()
    row_id = client.get("/v/1/rows").get_data(as_text=True).split('href="/v/1/row/')[1].split('"')[0]
    page = client.get(f"/v/1/row/{row_id}").get_data(as_text=True)
    token = page.split('name="token" value="')[1].split('"')[0]
    form = {"row_id": row_id, "note": "x"}
    no_token = client.post("/v/1/exclude", data=form)
    assert no_token.status_code == 403 and "did not come from this viewer" in no_token.get_data(as_text=True)
    elsewhere = client.post("/v/1/exclude", data={**form, "token": token}, headers={"Origin": "http://evil.example"})
    assert elsewhere.status_code == 403 and "http://evil.example" in elsewhere.get_data(as_text=True)
    store = Store(tmp_path / "home", read_only=True)
    assert store.one("SELECT count(*) FROM exclusions")[0] == 0  # neither marked anything
    store.close()
    ok = client.post("/v/1/exclude", data={**form, "token": token}, headers={"Origin": "http://localhost"})
    assert ok.status_code == 303
    store = Store(tmp_path / "home", read_only=True)
    assert store.one("SELECT count(*) FROM exclusions")[0] == 1
    store.close()
