"""A real Git server on 127.0.0.1 for the GitOps tier: a bare repository served over git's
smart HTTP protocol by ``git http-backend`` (git's own server program, run as CGI per request),
and a working clone the tests commit to and push from.

Why HTTP and not ``git daemon`` (git://): Flux's GitRepository CRD only admits
``http``, ``https`` and ``ssh`` URLs (``spec.url`` pattern ``^(http|https|ssh)://.*$``).

    with GitServer(workdir) as git:
        git.write("models/a.yaml", "...")
        sha = git.commit("add model a")
        git.url  # http://127.0.0.1:PORT/fleet.git
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .localplane.process import StartStop


def _git_exec_path() -> Path:
    out = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _handler(root: Path, backend: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _cgi(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "PATH": "/usr/bin:/bin",
            }
            proc = subprocess.run([str(backend)], input=body, env=env, capture_output=True,
                                  timeout=60)
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = proc.stdout.partition(b"\n\n")
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                k, _, v = line.partition(":")
                if k.lower() == "status":
                    status = int(v.strip().split()[0])
                elif k:
                    headers.append((k, v.strip()))
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _cgi
        do_POST = _cgi

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests read Flux's side; per-request lines would only add noise

    return Handler


@dataclass
class GitServer(StartStop):
    workdir: Path
    name: str = "fleet"
    branch: str = "main"
    port: int = 0
    server: ThreadingHTTPServer | None = field(default=None, init=False)
    thread: threading.Thread | None = field(default=None, init=False)

    @property
    def bare(self) -> Path:
        return self.workdir / "srv" / f"{self.name}.git"

    @property
    def clone(self) -> Path:
        return self.workdir / "work"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}.git"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = {"GIT_AUTHOR_NAME": "gitops-test", "GIT_AUTHOR_EMAIL": "gitops@example.invalid",
               "GIT_COMMITTER_NAME": "gitops-test",
               "GIT_COMMITTER_EMAIL": "gitops@example.invalid",
               "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(self.workdir), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(["git", *args], cwd=cwd or self.clone, env=env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def start(self) -> None:
        backend = _git_exec_path() / "git-http-backend"
        if not backend.exists():
            raise RuntimeError(f"{backend} is missing: install git (Debian package git)")
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.git("init", "--bare", f"--initial-branch={self.branch}", str(self.bare),
                 cwd=self.workdir)
        self.git("config", "http.receivepack", "true", cwd=self.bare)
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port),
                                          _handler(self.bare.parent, backend))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.git("clone", self.url, str(self.clone), cwd=self.workdir)
        self.git("checkout", "-B", self.branch)
        # The handler reads Content-Length bodies; a big buffer keeps pushes unchunked.
        self.git("config", "http.postBuffer", str(256 << 20))

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # ---- the tests' side: edit, commit, push ------------------------------------------
    def write(self, rel: str, text: str) -> Path:
        path = self.clone / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def copy(self, src: Path, rel: str) -> Path:
        dst = self.clone / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def remove(self, rel: str) -> None:
        self.git("rm", "-q", "-r", rel)

    def commit(self, message: str) -> str:
        """Commit everything in the clone and push it over HTTP; returns the commit SHA."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        self.git("push", "-q", "origin", f"HEAD:{self.branch}")
        return self.git("rev-parse", "HEAD")


__all__ = ["GitServer"]
