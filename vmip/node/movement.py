"""Movement detection on the MN (being written: see issue 7)."""

from __future__ import annotations

from typing import Any


class MovementWatcher:
    """Watches the MN's access links and moves the CoA (placeholder until written)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def start(self, loop: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def status(self) -> dict:
        return {"automatic": False}
