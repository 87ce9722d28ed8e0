"""`campushub serve`: the API on uvicorn, one process per worker, each with its own socket.

uvicorn's own workers share one listening socket, and whichever is first to wake accepts a
burst of new connections: 32 keep-alive clients were seen split 2/30 and 5/27 over two
workers, one worker doing nearly all the work while the other idled. Here each worker listens
on a socket of its own bound to the same address with `SO_REUSEPORT`, and the kernel spreads
incoming connections over them.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
from types import FrameType

APP = "campushub.graphql.app:create_app"
STOP_TIMEOUT_S = 10.0


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(app: str, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(app, factory=True, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[_listening_socket(host, port)])


def serve(host: str, port: int, workers: int, app: str = APP) -> int:
    """Serve the ASGI app that the factory `app` ("module:function") makes, until SIGTERM."""
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        import uvicorn

        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, log_level="warning", access_log=False)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(app, host, port), name=f"api-{n}") for n in range(workers)]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn finishes the requests in flight, then exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
        if process.exitcode not in (0, -signal.SIGTERM):
            # One worker gone means a share of the connections would go unanswered: stop all.
            print(f"error: API worker {process.name} exited with {process.exitcode}", file=sys.stderr)
            stop(signal.SIGTERM, None)
            for other in processes:
                other.join(STOP_TIMEOUT_S)
            return 1
    return 0
