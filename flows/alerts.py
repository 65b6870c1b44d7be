"""The optional alert: a JSON POST to a webhook (ATTRFLOW_WEBHOOK_URL, or a flow's `webhook`
parameter) when drift is detected and on each promotion decision. An alert that cannot be
delivered is logged, never fatal: the loop goes on without it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx

from components.settings import get_settings

log = logging.getLogger(__name__)


def send_alert(kind: str, body: dict[str, Any], url: str | None = None) -> bool:
    """POST {"kind", "time", **body} to `url` (default ATTRFLOW_WEBHOOK_URL); False if none or it failed."""
    url = url or get_settings().webhook_url
    if not url:
        return False
    payload = {"kind": kind, "time": datetime.now(UTC).isoformat(), **body}
    try:
        httpx.post(url, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as e:
        log.warning("webhook %s: the %s alert was not delivered (%s)", url, kind, e)
        return False
    return True
