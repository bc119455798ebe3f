"""poolwarden[http]: a shared httpx client on a local HTTP server."""

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from poolwarden import Warden


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


async def main(port: int) -> None:
    warden = Warden()
    api = warden.client("api", f"http://127.0.0.1:{port}", health_path="/healthz")
    async with warden:
        response = await api.get().get("/anything")
        assert response.text == "ok"


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
try:
    asyncio.run(main(server.server_address[1]))
finally:
    server.shutdown()
print("ok")
