"""A loopback HTTP server for download tests, with faults injected per path."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultyServer:
    """Serves `files` (path -> bytes). `faults[path]` is a list consumed one request at a time:
    'drop' (close mid-body), '500', '404', 'slow' (2 s before the first byte), 'norange'
    (ignore Range headers), 'trickle' (64 KiB every 0.1 s), or None (serve normally)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str | None]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                queue = server.faults.get(self.path, [])
                fault = queue.pop(0) if queue else None
                body = server.files.get(self.path)
                if body is None or fault == "404":
                    self.send_error(404, "Not Found")
                    return
                if fault == "500":
                    self.send_error(500, "Internal Server Error")
                    return
                if fault == "slow":
                    time.sleep(2)
                start = 0
                if range_header and fault != "norange":
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "trickle":
                    for offset in range(0, len(payload), 1 << 16):
                        self.wfile.write(payload[offset : offset + (1 << 16)])
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
