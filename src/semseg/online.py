"""One quick answer to "is this host reachable?", so offline machines never wait on retries."""

from __future__ import annotations

import functools
import socket


@functools.cache
def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Cached per process: the answer is asked for at start-up (W&B, pretrained weights) and a
    machine does not change networks mid-run often enough to matter.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
