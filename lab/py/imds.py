"""An IMDSv2 emulator, one per lab instance, served on 169.254.169.254:80 inside its namespace.

It speaks the protocol as EC2 does with `HttpTokens=required`:
- `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` in 1..21600 (else 400),
  answers the token with the same TTL header; a request carrying `X-Forwarded-For` is refused (403);
- every `GET` needs a live `X-aws-ec2-metadata-token` (else 401: no IMDSv1 fallback);
- unknown paths are 404; a directory answers its children, one per line, `/` after subdirectories.
The tree is built on each request from the moto state (through `tree_fn`), plus per-instance
overrides that tests set (spot notices, rebalance, scheduled events) and a fault mode.
"""

import http.server
import secrets
import socket
import sys
import threading
import time

MAX_TTL = 21600


class ImdsState:
    """What tests can change on one instance's IMDS."""

    def __init__(self):
        self.overrides = {}  # path under latest/meta-data/ -> text, or None to remove
        self.fault = {"mode": "ok", "delay_ms": 0}
        self.tokens = {}  # token -> expiry (monotonic)
        self.requests = 0


def _lookup(tree, parts):
    node = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_path(tree, path, value):
    parts = [p for p in path.split("/") if p]
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _listing(node):
    return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in sorted(node.items()))


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "EC2ws"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the lab logs nothing per request
        pass

    def _send(self, code, body=b"", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _faulted(self):
        st = self.server.imds_state
        st.requests += 1
        fault = st.fault
        if fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        mode = fault.get("mode", "ok")
        if mode == "refuse":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        if mode == "500":
            self._send(500, "Internal Server Error")
            return True
        if mode == "garbage":
            self._send(200, secrets.token_bytes(64))
            return True
        return False

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self._faulted():
            return
        if self.path != "/latest/api/token":
            self._send(404, "Not Found")
            return
        if self.headers.get("X-Forwarded-For"):
            self._send(403, "Forbidden")
            return
        raw = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(raw)
        except (TypeError, ValueError):
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            self._send(400, "Bad Request")
            return
        token = secrets.token_urlsafe(42)
        st = self.server.imds_state
        now = time.monotonic()
        st.tokens = {t: exp for t, exp in st.tokens.items() if exp > now}
        st.tokens[token] = now + ttl
        self._send(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def do_GET(self):
        if self._faulted():
            return
        st = self.server.imds_state
        token = self.headers.get("X-aws-ec2-metadata-token")
        expiry = st.tokens.get(token) if token else None
        if expiry is None or expiry <= time.monotonic():
            self._send(401, "Unauthorized")
            return
        tree = self.server.tree_fn()
        if tree is None:  # the instance is gone; its IMDS goes with it
            self._send(404, "Not Found")
            return
        for path, value in st.overrides.items():
            _set_path(tree["latest"]["meta-data"], path, value)
        path = self.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        node = _lookup(tree, parts) if parts else {"latest": {}}
        if node is None:
            self._send(404, "Not Found")
        elif isinstance(node, dict):
            self._send(200, _listing(node))
        else:
            self._send(200, str(node))

    def do_POST(self):
        self._send(405, "Method Not Allowed")


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that hung up mid-answer (an agent exiting, a timed-out poll) is normal here;
        # anything else is still printed.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class ImdsServer:
    """One instance's IMDS: an HTTP server on a socket already bound inside its namespace."""

    def __init__(self, sock, tree_fn, state):
        sock.listen(64)
        self.httpd = _Server(sock.getsockname(), _Handler, bind_and_activate=False)
        self.httpd.socket.close()
        self.httpd.socket = sock
        self.httpd.daemon_threads = True
        self.httpd.tree_fn = tree_fn
        self.httpd.imds_state = state
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
