"""API-key check for the endpoint: an ASGI middleware (BentoML's `add_asgi_middleware`).

With a key configured (ATTRFLOW_API_KEY), every request needs `Authorization: Bearer <key>`,
except the health checks, the Prometheus metrics and the API docs; anything else gets 401 before
its body is read. The key is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

PUBLIC_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json", "/schema.json"})
PUBLIC_PREFIXES = ("/static_content/", "/assets/")  # the docs page's files


class BearerAuth:
    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode() if api_key else None

    def _allowed(self, scope: dict[str, Any]) -> bool:
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        return hmac.compare_digest(given.strip(), self._expected)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._expected is None or scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized: send the API key as `Authorization: Bearer <key>`"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="attrflow"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
