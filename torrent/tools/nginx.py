"""nginx on loopback for the web-seed benchmark and tests: a static file server
with its own temporary configuration (no daemon, pid and logs in its directory).

Range requests are nginx's default for static files; keep-alive is on.  The
access log records each request's Range, status, connection number and the
request's number on that connection, so a test can check both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["NGINX_START_TIMEOUT", "Nginx", "nginx_binary"]

#: Seconds nginx gets to listen, and to exit once told to.
NGINX_START_TIMEOUT = 10.0

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format ws '$request_method $request_uri range="$http_range" status=$status '
                  'bytes=$body_bytes_sent conn=$connection req=$connection_requests';
    access_log {dir}/access.log ws;
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fastcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ limit_rate {limit_rate}; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """``with Nginx(root, workdir) as ng:`` serves ``root`` at ``ng.url`` (ends in ``/``)."""

    def __init__(self, root: Path | str, workdir: Path | str, *, limit_rate: int = 0) -> None:
        """``limit_rate``: bytes/s per connection (nginx's ``limit_rate``; 0: none)."""
        self.limit_rate = limit_rate
        self.root = Path(root).resolve()
        self.dir = Path(workdir).resolve()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(_CONF.format(dir=self.dir, port=self.port, root=self.root,
                                         limit_rate=self.limit_rate))
            self.proc = subprocess.Popen(
                [binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + NGINX_START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.05)
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None \
                and self.proc.stderr else ""
            self.stop()
            if "Address already in use" not in err or attempt == 4:
                raise RuntimeError(f"nginx did not start: {err[-500:]}")
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()  # SIGTERM: fast shutdown of the master and its worker
            try:
                p.wait(NGINX_START_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(NGINX_START_TIMEOUT)
        if p.stderr is not None:
            p.stderr.close()

    def access_log(self) -> list[str]:
        try:
            return (self.dir / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
