"""`factory view`: a local web page (127.0.0.1) to inspect, compare and curate versions.

Each request opens the store read-only and closes it at the end: viewing never writes, and a
`factory build` can take the store between two page loads. With --curate, marking a row
excluded opens it read-write for that one insert (the `exclusions` table). Pages are
server-side Jinja templates (factory/templates/), charts inline SVG (_chart.html), no JS.
"""

import hmac
import itertools
import json
import secrets
import socket
from urllib.parse import urlencode

import duckdb
from flask import Flask, g, redirect, render_template, request, url_for
from werkzeug.serving import make_server

from factory import viewdata
from factory.curate import exclusions, mark, unmark
from factory.store import Store
from factory.worddiff import word_diff
from nanocode.common import InputError, nanocode_home
from nanocode.record import message_text


class Problem(Exception):
    """A page-level problem shown to the person: (HTTP status, title, text)."""

    def __init__(self, status: int, title: str, text: str):
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


def _soul_text(sha: str) -> str | None:
    """The SOUL's text when the current SOUL file is the one this version was built with."""
    try:
        from nanocode.spec import load_soul

        soul = load_soul(None)
    except Exception:  # no SOUL file here: the hash is all we have
        return None
    return soul.path.read_text() if soul.sha256 == sha else None


def create_app(home=None, curate: bool = False) -> Flask:
    app = Flask(__name__)
    # a marking POST must carry this server's token: another site open in the same browser can
    # send the form, but cannot read a page of ours to learn the token
    app.config.update(HOME=home, CURATE=curate, TOKEN=secrets.token_urlsafe(32))
    app.jinja_env.globals.update(curate=curate, json=json, token=app.config["TOKEN"], page_query=lambda n: urlencode(
        {**{k: v for k, v in request.args.items() if v and k != "page"}, "page": n}))

    def store() -> Store:
        if "store" not in g:
            try:
                g.store = Store(app.config["HOME"], read_only=True)
            except InputError as e:
                raise Problem(503, "store not available", str(e)) from None
            if missing := viewdata.missing_catalog(g.store):
                raise Problem(500, "older store schema", f"{g.store.path} was made by an older factory: it has no "
                              f"{', '.join(missing)}. Rebuild with `factory build --new`, or view it with the "
                              "nanocode that made it.")
        return g.store

    @app.teardown_appcontext
    def close(_exc):
        if (s := g.pop("store", None)) is not None:
            s.db.close()

    def version(v: int) -> dict:
        meta = next((r for r in store().versions() if r["version"] == v), None)
        if meta is None:
            known = ", ".join(str(r["version"]) for r in store().versions()) or "none yet"
            raise Problem(404, f"no version {v}", f"{store().path} has no version {v} (versions: {known}).")
        if missing := viewdata.missing_columns(store(), v):
            raise Problem(500, "older parquet schema", f"version {v}'s Parquet parts lack {', '.join(missing)}: "
                          "they were written by an older factory.")
        return meta

    @app.errorhandler(Problem)
    def problem(e: Problem):
        return render_template("problem.html", title=e.title, text=e.text), e.status

    @app.errorhandler(duckdb.Error)
    @app.errorhandler(InputError)  # a damaged part (Store._execute)
    def db_error(e):
        text = " ".join(str(e).split())[:400]
        return render_template("problem.html", title="store query failed",
                               text=f"{text} (a store from an older schema, or one a build holds right now?)"), 500

    @app.errorhandler(404)
    def not_found(_e):
        return render_template("problem.html", title="not found", text=f"nothing at {request.path}"), 404

    @app.get("/")
    def index():
        rows = [{**meta, "s": meta["summary"] or store().figures(meta["version"]),
                 "marks": len(exclusions(store(), meta["version"]))} for meta in store().versions()]
        return render_template("index.html", versions=rows, path=store().path)

    @app.get("/v/<int:v>")
    def version_page(v):
        meta = version(v)
        figures = store().figures(v)
        return render_template("version.html", v=v, meta=meta, figures=figures, charts=viewdata.charts(store(), v),
                               soul_text=_soul_text(meta["soul_sha256"]), marks=exclusions(store(), v),
                               empty=figures["inputs done"] == 0)

    @app.get("/v/<int:v>/rows")
    def rows(v):
        meta = version(v)
        f = viewdata.Filters.parse(request.args)
        page = max(0, request.args.get("page", 0, type=int) or 0)
        total, items = viewdata.rows_page(store(), v, f, page) if not f.errors else (0, [])
        args = {k: val for k, val in request.args.items() if k != "page" and val}
        return render_template("rows.html", v=v, meta=meta, f=f, total=total, rows=items, page=page,
                               pages=max(1, -(-total // viewdata.PAGE)), args=args,
                               choices=viewdata.choices(store(), v))

    @app.get("/v/<int:v>/row/<path:row_id>")
    def row(v, row_id):
        version(v)
        if (found := viewdata.row(store(), v, row_id)) is None:
            raise Problem(404, "no such row", f"version {v} has no row {row_id}")
        return render_template("row.html", v=v, r=found)

    @app.get("/v/<int:v>/pairs")
    def pairs(v):
        meta = version(v)
        q, page = request.args.get("q", "").strip(), max(0, request.args.get("page", 0, type=int) or 0)
        total, items = viewdata.pairs_page(store(), v, q, page)
        return render_template("pairs.html", v=v, meta=meta, q=q, total=total, pairs=items, page=page,
                               pages=max(1, -(-total // viewdata.PAGE)))

    @app.get("/v/<int:v>/pair/<pair_id>")
    def pair(v, pair_id):
        version(v)
        if (p := viewdata.pair(store(), v, pair_id)) is None:
            raise Problem(404, "no such pair", f"version {v} has no pair {pair_id}")
        sides = []
        for rej, cho in itertools.zip_longest(p["rejected"], p["chosen"]):
            left, right = word_diff(message_text(rej) if rej else "", message_text(cho) if cho else "")
            role = (cho or rej)["role"]
            sides.append({"role": role, "rejected": left if rej else None, "chosen": right if cho else None})
        critics = sorted(set(p["scores"].get("chosen", {})) | set(p["scores"].get("rejected", {})))
        return render_template("pair.html", v=v, p=p, sides=sides, critics=critics)

    def curating(v: int):
        if not app.config["CURATE"]:
            raise Problem(403, "read-only", "this viewer is read-only: start it with `factory view --curate` to mark rows")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            raise Problem(403, "another site", f"a page at {origin} tried to mark rows here: refused")
        if not hmac.compare_digest(request.form.get("token", ""), app.config["TOKEN"]):
            raise Problem(403, "no token", "this form did not come from this viewer (its token is missing or "
                                           "stale: reload the page)")
        version(v)
        g.pop("store").db.close()  # DuckDB allows one read-write or many read-only openers
        try:
            return Store(app.config["HOME"])
        except InputError as e:
            raise Problem(503, "store busy", str(e)) from None

    @app.post("/v/<int:v>/<any(exclude, include):action>")
    def set_mark(v, action):
        row_id = request.form.get("row_id", "")
        s = curating(v)
        try:
            if action == "exclude":
                mark(s, v, row_id, request.form.get("note", ""))
            else:
                unmark(s, v, row_id)
        except InputError as e:
            raise Problem(400, "cannot mark", str(e)) from None
        finally:
            s.close()
        return redirect(_next(request.form.get("next") or url_for("row", v=v, row_id=row_id)), 303)

    @app.template_filter("pct")
    def pct(x):
        return f"{x:.1%}" if isinstance(x, (int, float)) else str(x if x is not None else "")

    return app


def _next(url: str) -> str:
    return url if url.startswith("/") and not url.startswith("//") else "/"


def server(home=None, port: int = 8765, curate: bool = False):
    """A werkzeug server on 127.0.0.1:port (port 0: a free one); InputError if it is taken."""
    app = create_app(home, curate)
    try:
        with socket.socket() as probe:  # werkzeug itself would print its own advice and sys.exit(1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        return make_server("127.0.0.1", port, app, threaded=True)
    except OSError as e:
        raise InputError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}): another program holds it; "
                         "pick another with --port") from None


def serve(version: int | None, port: int, curate: bool) -> None:
    home = nanocode_home()
    store = Store(home, read_only=True)  # no store, or an unknown version: say so now, not on the page
    try:
        if version is not None:
            store.version(version)
    finally:
        store.db.close()
    srv = server(home, port, curate)
    path = f"/v/{version}" if version is not None else "/"
    print(f"factory view: http://127.0.0.1:{srv.server_port}{path}  ({'curating' if curate else 'read-only'}; Ctrl-C stops)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
