"""A Hugging Face Hub on loopback: model repositories with commits and a movable `main`.

Serves what `huggingface_hub` asks for (`hf_hub_download`, `snapshot_download`): repo info and
tree listings under `/api/models/<repo>/...`, and files under `/<repo>/resolve/<revision>/<path>`
with the `X-Repo-Commit` and `ETag` headers the client uses to place files in its cache.
`push(repo, files)` adds a commit and moves `main` to it; every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                outer._serve(self, head=True)

            def do_GET(self):
                outer._serve(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def push(self, repo: str, files: dict[str, bytes]) -> str:
        """A new commit of `repo` holding `files`; `main` moves to it. Returns the commit hash."""
        r = self.repos.setdefault(repo, {"commits": {}, "main": None})
        commit = hashlib.sha1(f"{repo}:{len(r['commits'])}".encode() + b"".join(sorted(files.values()))).hexdigest()
        r["commits"][commit] = dict(files)
        r["main"] = commit
        return commit

    def push_folder(self, repo: str, folder: Path, prefix: str = "") -> str:
        """A commit with every file under `folder` (optionally under `prefix/` in the repo)."""
        files = {prefix + str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.push(repo, files)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------------------------------
    def _commit(self, repo: str, rev: str) -> str | None:
        r = self.repos.get(repo)
        if r is None:
            return None
        return r["main"] if rev == "main" else (rev if rev in r["commits"] else None)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.log.append((h.command, path))
        body, headers = None, {}
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):].split("/")
            repo, kind, rev = "/".join(rest[:2]), rest[2], rest[3]
            commit = self._commit(repo, rev)
            if commit is not None:
                files = self.repos[repo]["commits"][commit]
                if kind == "tree":
                    body = json.dumps([{"type": "file", "path": k, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                                       for k, v in files.items()]).encode()
                else:
                    body = json.dumps({"id": repo, "sha": commit, "siblings": [{"rfilename": k} for k in files]}).encode()
        elif "/resolve/" in path:
            repo, _, tail = path.strip("/").partition("/resolve/")
            rev, _, name = tail.partition("/")
            commit = self._commit(repo, rev)
            if commit is not None and name in self.repos[repo]["commits"][commit]:
                body = self.repos[repo]["commits"][commit][name]
                headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        status = 200 if body is not None else 404
        body = body if body is not None else b'{"error": "not found"}'
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if status == 404:
            h.send_header("X-Error-Code", "EntryNotFound")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
