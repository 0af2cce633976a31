"""A second gateway process for multi-process tests: the real ASGI application under
uvicorn in its own interpreter, against the test run's database and Redis prefix (both
passed in the environment). Prints the port it listens on, then serves until killed.

    python -m tests.fakes.gateway_process
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")
    import django

    django.setup()
    import uvicorn
    from django.core.asgi import get_asgi_application

    from tokenbill.routing import build_application

    application = build_application(get_asgi_application())
    if os.environ.get("TB_NULL_BILLER") == "1":  # bench/config_scale.py: the gateway's own cost
        from billing import gate

        gate.set_biller(gate.NullBiller())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(application, lifespan="on", log_level="warning", loop="asyncio",
                            http="tokenbill.server_protocol:HttpToolsProtocol", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
