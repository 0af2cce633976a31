"""Run the real ASGI application (tokenbill.asgi.application: gateway + Django) under
uvicorn in a background thread on 127.0.0.1 and a free port, for the openai SDK to call
over real sockets."""

from __future__ import annotations

import threading
import time

import uvicorn


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LiveServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, lifespan="on", log_level="warning",
                                loop="asyncio", http="tokenbill.server_protocol:HttpToolsProtocol", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="gateway-under-test")
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self.server:
            self.server.should_exit = True
        if self.thread:
            self.thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
