#!/usr/bin/env python3
"""What the pull tests put next to Debian's docker-registry.

  registry-aid.py token-keys DIR
      an RSA key and a self-signed certificate in DIR (key.pem, cert.pem) for the registry's
      `auth.token.rootcertbundle`
  registry-aid.py token-server PORT DIR ISSUER SERVICE USER PASSWORD
      a bearer-token server (the registry's `auth.token.realm`): a GET with USER:PASSWORD as
      basic credentials gets a JWT (RS256, signed with DIR/key.pem, the certificate in its
      x5c header) granting pull and push on the repositories it asks for; anything else 401
  registry-aid.py flaky-proxy PORT UPSTREAM LOG [MODE]
      an HTTP proxy to UPSTREAM (host:port); every request, with its Range header, is
      logged to LOG as "METHOD PATH RANGE STATUS [what was done]". MODE:
        cut (default)  fails each manifest's first request with 503 and cuts each blob's
                       first response in the middle (headers promise the whole blob, half
                       is sent, the connection is closed)
        flip-once      flips one byte in the middle of each blob's first response
        chaos:SEED     each blob response, at random (seeded): passed (70%), cut (15%), or
                       a byte flipped (15%); each manifest request fails with 503 one time
                       in five; once a file LOG.off exists, everything passes
        slow:KBPS      passes everything, blob bodies at KBPS kilobytes a second
        flip-slow:KBPS flip-once, blob bodies at KBPS kilobytes a second (a client reads
                       the flipped bytes before it can know)
  registry-aid.py count-proxy PORT UPSTREAM LOG KBPS
      an HTTP proxy to UPSTREAM that streams every answer through, all of them together at
      most KBPS kilobytes a second (0: unlimited), and logs each request to LOG, once its
      answer is sent, as "METHOD PATH RANGE STATUS BYTES" (BYTES: body bytes sent): the
      upstream egress of a fleet test, measured

Signing uses the openssl command, so nothing beyond the standard library is imported.
"""

import base64
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_keys(directory):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=strata-test-token-issuer",
                    "-keyout", f"{directory}/key.pem", "-out", f"{directory}/cert.pem"],
                   check=True, capture_output=True)


def token_server(port, directory, issuer, service, user, password):
    der = subprocess.run(["openssl", "x509", "-in", f"{directory}/cert.pem", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    header = b64url(json.dumps({"typ": "JWT", "alg": "RS256",
                                "x5c": [base64.b64encode(der).decode()]}).encode())
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def sign(claims):
        body = header + "." + b64url(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{directory}/key.pem"],
                                   input=body.encode(), check=True, capture_output=True).stdout
        return body + "." + b64url(signature)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, name, _ = scope.split(":", 2)
                access.append({"type": kind, "name": name, "actions": ["pull", "push"]})
            now = int(time.time())
            token = sign({"iss": issuer, "sub": user, "aud": service, "exp": now + 600,
                          "nbf": now - 60, "iat": now, "jti": os.urandom(8).hex(),
                          "access": access})
            body = json.dumps({"token": token, "access_token": token, "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def flaky_proxy(port, upstream, log_path, mode="cut"):
    import random
    seen = set()
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)
    chaos = random.Random(int(mode.split(":", 1)[1])) if mode.startswith("chaos:") else None
    rate = int(mode.split(":", 1)[1]) * 1000 if mode.startswith(("slow:", "flip-slow:")) else None
    flips = mode == "flip-once" or mode.startswith("flip-slow:")

    def draw(n):
        with lock:
            return chaos.randrange(n)

    def calm():
        return os.path.exists(log_path + ".off")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def first_time(self, key):
            with lock:
                if key in seen:
                    return False
                seen.add(key)
                return True

        def relay(self):
            path = self.path
            rng = self.headers.get("Range", "-")
            is_blob = self.command == "GET" and "/blobs/sha256:" in path
            is_manifest = "/manifests/" in path
            if chaos:
                fail_manifest = not calm() and draw(5) == 0
            else:
                fail_manifest = mode == "cut" and self.first_time(("manifest", path))
            if rate:
                fail_manifest = False
            if is_manifest and fail_manifest:
                log.write(f"{self.command} {path} {rng} 503\n")
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(upstream, timeout=60)
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            damageable = is_blob and resp.status in (200, 206) and len(data) > 1
            if chaos:
                roll = draw(100) if damageable and not calm() else 0
                fate = "cut" if 70 <= roll < 85 else "flip" if roll >= 85 else "pass"
            elif damageable and (flips or mode == "cut") and self.first_time(("blob", path)):
                fate = "cut" if mode == "cut" else "flip"
            else:
                fate = "pass"
            cut = fate == "cut"
            if fate == "flip":
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            log.write(f"{self.command} {path} {rng} {resp.status}{'' if fate == 'pass' else ' ' + fate}\n")
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            if cut:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and rate and is_blob:
                step = 64 * 1024
                try:
                    for at in range(0, len(data), step):
                        self.wfile.write(data[at:at + step])
                        time.sleep(step / rate)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # The client went away.
            elif self.command != "HEAD":
                self.wfile.write(data[: len(data) // 2] if cut else data)
            if cut:
                self.wfile.flush()
                self.close_connection = True
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = relay

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def count_proxy(port, upstream, log_path, kbps):
    log = open(log_path, "a", buffering=1)
    rate = int(kbps) * 1000
    bucket = {"next": time.monotonic()}
    lock = threading.Lock()

    def throttle(n):
        """Waits until n more bytes fit the shared rate."""
        if not rate:
            return
        with lock:
            now = time.monotonic()
            start = max(now, bucket["next"])
            bucket["next"] = start + n / rate
        if start > now:
            time.sleep(start - now)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def relay(self):
            rng = self.headers.get("Range", "-")
            length = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(upstream, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            chunked = resp.getheader("Content-Length") is None and self.command != "HEAD"
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(k, v)
            if chunked:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            sent = 0
            try:
                while self.command != "HEAD":
                    data = resp.read(64 * 1024)
                    if not data:
                        break
                    throttle(len(data))
                    self.wfile.write(data)
                    sent += len(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # The client went away.
            log.write(f"{self.command} {self.path} {rng} {resp.status} {sent}\n")
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = relay

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

    Server(("127.0.0.1", int(port)), Handler).serve_forever()


def main():
    args = sys.argv[1:]
    if args[:1] == ["token-keys"] and len(args) == 2:
        token_keys(args[1])
    elif args[:1] == ["token-server"] and len(args) == 7:
        token_server(int(args[1]), *args[2:])
    elif args[:1] == ["flaky-proxy"] and len(args) in (4, 5):
        flaky_proxy(int(args[1]), args[2], args[3], *args[4:])
    elif args[:1] == ["count-proxy"] and len(args) == 5:
        count_proxy(*args[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
