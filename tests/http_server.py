"""A loopback HTTP server for download tests, with faults injected per path."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML_PAGE = b"<!DOCTYPE html>\n<html><body><h1>Please log in</h1></body></html>\n"


class FaultyServer:
    """Serves `files` (path -> bytes); `redirects[path]` answers 302 to another path, every time.

    `faults[path]` is a list consumed one request at a time:
    'drop' (close mid-body), '500', '404', 'slow' (2 s before the first byte), 'norange'
    (ignore Range headers), 'trickle' (64 KiB every 0.1 s), 'drip' (one byte every 0.2 s),
    '429' and '503' (with Retry-After: 0), '503-hour' (Retry-After: 3600), 'cut-chunked'
    (a chunked body cut off mid-chunk), 'bad-status' (a garbage status line), 'bad-length'
    (Content-Length: abc), 'wrong-range' (a 206 whose bytes and Content-Range start 1000 bytes
    early), 'gzip' (the body gzipped, with Content-Encoding), 'html' (a login page as text/html),
    'html-as-binary' (the same page as application/octet-stream), or None (serve normally).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.faults: dict[str, list[str | None]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                queue = server.faults.get(self.path, [])
                fault = queue.pop(0) if queue else None
                body = server.files.get(self.path)
                if body is None or fault == "404":
                    self.send_error(404, "Not Found")
                    return
                if fault in ("500", "429", "503", "503-hour"):
                    self.send_response(int(fault[:3]))
                    if fault != "500":
                        self.send_header("Retry-After", "3600" if fault == "503-hour" else "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "bad-status":
                    self.wfile.write(b"HTTP/1.1 OK-ISH\r\n\r\n")
                    self.close_connection = True
                    return
                if fault in ("html", "html-as-binary"):
                    kind = "text/html; charset=utf-8" if fault == "html" else "application/octet-stream"
                    self._send(200, HTML_PAGE, {"Content-Type": kind})
                    return
                if fault == "gzip":
                    self._send(200, gzip.compress(body), {"Content-Encoding": "gzip"})
                    return
                if fault == "slow":
                    time.sleep(2)
                start = 0
                headers = {"Content-Type": "application/octet-stream"}
                if range_header and fault != "norange":
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    if fault == "wrong-range":
                        start = max(0, start - 1000)
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                else:
                    status = 200
                payload = body[start:]
                if fault == "cut-chunked":
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n" % len(payload) + payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "bad-length":
                    headers["Content-Length"] = "abc"
                self.send_response(status)
                headers.setdefault("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if fault == "bad-length":
                    self.close_connection = True
                if fault == "drop":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault in ("trickle", "drip"):
                    step, pause = (1 << 16, 0.1) if fault == "trickle" else (1, 0.2)
                    try:
                        for offset in range(0, len(payload), step):
                            self.wfile.write(payload[offset : offset + step])
                            self.wfile.flush()
                            time.sleep(pause)
                    except OSError:  # the client gave up
                        self.close_connection = True
                    return
                self.wfile.write(payload)

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FaultyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
