"""Profile the gateway under load with cProfile (bench helper; needs a prepared env).

    python bench/profile_gateway.py <port> <seconds>   # serve under cProfile, then print the top
"""

import cProfile
import os
import pstats
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")


def main(port: int, seconds: float) -> None:
    import uvicorn

    if os.environ.get("BENCH_BILLING") == "off":
        from bench.null_billing_asgi import application
    else:
        from tokenbill.asgi import application
    server = uvicorn.Server(uvicorn.Config(application, port=port, loop="uvloop", http="tokenbill.server_protocol:HttpToolsProtocol",
                                           access_log=False, log_level="warning"))
    if seconds > 0:  # else: until SIGTERM (uvicorn stops cleanly, then the stats print)
        threading.Timer(seconds, lambda: setattr(server, "should_exit", True)).start()
    # uvicorn re-raises the SIGTERM it caught once it has stopped: let that one be a no-op.
    signal.signal(signal.SIGTERM, lambda *_: None)
    profiler = cProfile.Profile()
    profiler.runcall(server.run)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(int(os.environ.get("PROFILE_TOP", "45")))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
