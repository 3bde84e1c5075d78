#!/usr/bin/env python3
"""The deathstar of Cilium's Star Wars demo: a stand-in for the docker.io/cilium/starwars
image, answering the same API with the same texts.

    GET  /v1                    the API, as JSON
    POST /v1/request-landing    "Ship landed"
    PUT  /v1/exhaust-port       503 "Panic: deathstar exploded" and a goroutine trace

Usage: python3 deathstar.py [--port 80] [--bind 0.0.0.0]   (examples/demo.sh runs it in
the deathstar pod's network namespace)
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = {
    "name": "Death Star",
    "hostname": "deathstar",
    "model": "DS-1 Orbital Battle Station",
    "manufacturer": "Imperial Department of Military Research, Sienar Fleet Systems",
    "cost_in_credits": "1000000000000",
    "length": "120000",
    "crew": "342953",
    "passengers": "843342",
    "cargo_capacity": "1000000000000",
    "hyperdrive_rating": "4.0",
    "starship_class": "Deep Space Mobile Battlestation",
    "api": [
        "GET   /v1",
        "GET   /v1/healthz",
        "POST  /v1/request-landing",
        "PUT   /v1/cargobay",
        "GET   /v1/hyper-matter-reactor/status",
        "PUT   /v1/exhaust-port",
    ],
}

PANIC = """Panic: deathstar exploded

goroutine 1 [running]:
main.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)
        /code/src/github.com/empire/deathstar/
        temp/main.go:9 +0x64
main.main()
        /code/src/github.com/empire/deathstar/
        temp/main.go:5 +0x85
"""


class Deathstar(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "deathstar"

    def answer(self, status, body, content_type="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drain_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def route(self, method):
        self.drain_body()
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if method == "GET" and path == "/v1":
            self.answer(200, json.dumps(API, indent=2) + "\n", "application/json")
        elif method == "GET" and path == "/v1/healthz":
            self.answer(200, "OK\n")
        elif method == "POST" and path == "/v1/request-landing":
            self.answer(200, "Ship landed\n")
        elif method == "PUT" and path == "/v1/exhaust-port":
            self.answer(503, PANIC)
        else:
            self.answer(404, "Not found\n")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def log_message(self, fmt, *args):
        sys.stderr.write("deathstar: %s %s\n" % (self.client_address[0], fmt % args))


def main():
    parser = argparse.ArgumentParser(description="The Star Wars demo's deathstar")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Deathstar)
    server.daemon_threads = True
    sys.stderr.write("deathstar: listening on %s:%d\n" % (args.bind, args.port))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
