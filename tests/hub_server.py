"""A loopback stand-in for the Hugging Face Hub API, for publish tests (set HF_ENDPOINT to .url).

It answers the routes huggingface_hub (1.x) uses to create a repo, commit and tag, as the real
Hub shapes them (checked against huggingface_hub/hf_api.py and _commit_api.py):

    POST /api/repos/create                           {"url": ...}
    GET  /api/datasets/{repo}/refs                   {"branches", "converts", "tags"}
    POST /api/validate-yaml                          {} (the README's metadata check)
    POST /api/datasets/{repo}/preupload/{revision}   every file `regular`: contents go inline
    POST /api/datasets/{repo}/commit/{revision}      NDJSON header + base64 files -> a commit oid
    POST /api/datasets/{repo}/tag/{revision}         409 if the tag exists
    (and the same under /api/models/ for model repos: `trainer export --push`)

Every request is kept in `server.calls` as (method, path, parsed body, headers); committed files
in `server.repos[repo]["files"]` (bytes) and tags in `server.repos[repo]["tags"]`. Anything
else answers 404, which the client raises and a test notices.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self):
        self.calls, self.repos, self.lock = [], {}, threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def _serve(self, method):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if "ndjson" in (self.headers.get("Content-Type") or ""):
                    body = [json.loads(line) for line in raw.splitlines() if line.strip()]
                else:
                    body = json.loads(raw) if raw else None
                with hub.lock:
                    hub.calls.append((method, path, body, dict(self.headers)))
                    status, reply = hub.route(method, path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, method, path, body):
        if (method, path) == ("POST", "/api/repos/create"):
            repo = f"{body['organization']}/{body['name']}"
            url = f"{self.url}/datasets/{repo}"
            if repo in self.repos:  # the Hub's 409 names the repo's url too (create_repo reads it)
                return 409, {"error": "You already created this dataset repo", "url": url}
            self.repos[repo] = {"files": {}, "tags": {}, "head": "0" * 40}
            return 200, {"url": url}
        if (method, path) == ("POST", "/api/validate-yaml"):
            return 200, {"errors": [], "warnings": []}
        m = re.fullmatch(r"/api/(?:datasets|models)/([^/]+/[^/]+)/(refs|preupload|commit|tag)(?:/(.+))?", path)
        repo = self.repos.get(m[1]) if m else None
        if repo is None:
            return 404, {"error": f"no route or repo for {method} {path}"}
        kind = m[2]
        if kind == "refs":
            ref = lambda name, kind, oid: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}  # noqa: E731
            return 200, {"branches": [ref("main", "heads", repo["head"])], "converts": [],
                         "tags": [ref(t, "tags", oid) for t, oid in repo["tags"].items()]}
        if kind == "preupload":
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in body["files"]]}
        if kind == "commit":
            for line in body[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line
                repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            repo["head"] = hashlib.sha1(json.dumps(body).encode()).hexdigest()
            return 200, {"commitUrl": f"{self.url}/datasets/{m[1]}/commit/{repo['head']}",
                         "commitOid": repo["head"], "pullRequestUrl": None}
        if body["tag"] in repo["tags"]:
            return 409, {"error": f"tag {body['tag']} already exists"}
        repo["tags"][body["tag"]] = m[3]
        return 200, {}
