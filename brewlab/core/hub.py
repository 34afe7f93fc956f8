"""Is the Hugging Face hub reachable? Asked before any hub download, so offline runs fail in
seconds with a pointer to local files instead of waiting on retries."""

from __future__ import annotations


def hub_unreachable() -> str | None:
    """The hub endpoint when no connection to it opens within seconds, else None. Without this
    check `datasets` and `transformers` retry for a minute or more before they give up on a
    machine with no network.
    Skipped in offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), where the local HF cache serves."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None  # a direct connection says nothing behind a proxy: let the hub libraries try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=5).close()
    except OSError:
        return constants.ENDPOINT
    return None
