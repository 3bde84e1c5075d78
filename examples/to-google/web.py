"""The internet of the to-google demo: one HTTP server answering for every name it is asked
for, the way google.com answers a plain-HTTP request (301 to www.google.com)."""
import argparse
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        body = f"<HTML><HEAD><TITLE>301 Moved</TITLE></HEAD><BODY>{host} has moved</BODY></HTML>\n".encode()
        self.send_response(301)
        self.send_header("Location", f"http://www.{host}/")
        self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=80)
args = parser.parse_args()
server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
server.daemon_threads = True
server.serve_forever()
