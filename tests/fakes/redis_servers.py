"""Our own redis-server processes for tests that need TLS, a unix socket, a password or a
connection killed under a command: never the shared server (other engineers' tests use it).

Certificates are generated here with `openssl` (a CA, a server certificate for localhost /
127.0.0.1 signed by it, a client certificate for mutual TLS), as an operator's managed Redis
would present them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """ca.crt/ca.key, server.crt/.key (SAN localhost, 127.0.0.1), client.crt/.key, and an
    unrelated other-ca.crt (a CA that did not sign the server)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=tokenbill test {ca}", cwd=folder)
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'tokenbill client'}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", *ext, cwd=folder)
    return {p.stem if p.suffix == ".crt" else p.name: p for p in folder.iterdir()}


@dataclass
class RedisServer:
    proc: subprocess.Popen
    url: str  # a URL redis-py and TokenBill read the same way
    admin: redis.Redis  # a redis-py client to the same server, for the test's own checks
    certs: dict | None = None
    port: int = 0

    def stop(self) -> None:
        self.admin.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(folder: Path, *, tls: bool = False, unix: bool = False, password: str | None = None,
          acl_user: tuple[str, str] | None = None) -> RedisServer:
    """A redis-server listening on TLS (port), a unix socket, or plain TCP, in `folder`."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    port = free_port()
    if password:
        args += ["--requirepass", password]
    if acl_user:
        args += ["--user", acl_user[0], "on", f">{acl_user[1]}", "~*", "&*", "+@all"]
    if tls:
        certs = make_certificates(folder / "certs")
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["server"]),
                 "--tls-key-file", str(certs["server.key"]), "--tls-ca-cert-file", str(certs["ca"])]
    elif unix:
        sock = folder / "redis.sock"
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    else:
        args += ["--port", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if tls:
        # redis-server asks for a client certificate by default (tls-auth-clients yes)
        url = (f"rediss://localhost:{port}/0?ssl_ca_certs={certs['ca']}"
               f"&ssl_certfile={certs['client']}&ssl_keyfile={certs['client.key']}")
        admin = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(certs["ca"]),
                            ssl_certfile=str(certs["client"]), ssl_keyfile=str(certs["client.key"]),
                            password=password)
    elif unix:
        url = f"unix://{folder / 'redis.sock'}"
        admin = redis.Redis(unix_socket_path=str(folder / "redis.sock"), password=password)
    else:
        url = f"redis://127.0.0.1:{port}/0"
        admin = redis.Redis(host="127.0.0.1", port=port, password=password)
    server = RedisServer(proc=proc, url=url, admin=admin, certs=certs if tls else None, port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            admin.ping()
            return server
        except (redis.ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not start: {args}")
            time.sleep(0.05)
