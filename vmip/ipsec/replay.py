"""Inbound anti-replay window and ESN inference (RFC 4303 §3.4.3, appendix A).

The window is a Python int used as a bitmap: bit ``i`` set means sequence
number ``top - i`` has been received and authenticated.  Shifting an int of
a few hundred words is a handful of machine instructions, so a 1024-packet
window (the default, docs/design.md §9) costs about as much as a 64-bit one.

Processing order, as RFC 4303 §3.4.3 requires: :meth:`ReplayWindow.check`
before the ICV is verified (cheap rejection of duplicates), and
:meth:`ReplayWindow.accept` only after it verified (a forged packet must not
move the window).

Choices (documented in docs/ipsec.md):

* ``size == 0`` disables anti-replay: every authenticated packet is
  accepted, duplicates included.  ``top`` is still tracked, because ESN
  inference needs it; with no window to anchor it, the high half is inferred
  as the value that puts the packet closest to ``top`` (a 2^31 window).
* Sequence number 0 is never sent (RFC 4303 §2.2: the first packet carries
  1), so a packet whose 64-bit number infers to 0 or below is "replay_old".
* No resynchronisation after a run of ICV failures (the optional procedure
  of appendix A3): an SA that loses 2^32 packets in a row is rekeyed instead.
* A number whose bit is set because this window accepted it is a
  ``duplicate``: an exact copy of an authenticated packet, which multi-CoA
  duplicate mode sends on purpose (docs/multi-coa.md) and which an in-window
  replay cannot be told apart from; dropped before the ICV all the same.
  Only numbers marked by :meth:`ReplayWindow.resume` (received before a
  restart, never seen by this window) are ``replay``.
"""

from __future__ import annotations

_LOW32 = 0xFFFFFFFF
_MAX_SEQ = (1 << 64) - 1
#: Anchor for ESN inference when the replay window is disabled.
_INFERENCE_WINDOW_WITHOUT_REPLAY = 1 << 31
#: Largest window accepted: ESN inference (appendix A2) needs W < 2^32.
MAX_WINDOW = 1 << 31

DUPLICATE = "duplicate"  # this window accepted the number already: a copy
REPLAY = "replay"  # marked as received by a restart's resume, not seen here
REPLAY_OLD = "replay_old"  # left of the window, or a number never sent


class ReplayWindow:
    """Receiver state of one SA: highest authenticated sequence number and bitmap."""

    __slots__ = ("_inference_window", "_mask", "_resumed", "bitmap", "esn", "size", "top")

    def __init__(self, size: int = 1024, esn: bool = False) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW}, not {size}")
        self.size = size
        self.esn = esn
        #: Highest sequence number authenticated so far (64-bit with ESN); 0 = none yet.
        self.top = 0
        self.bitmap = 0
        self._mask = (1 << size) - 1
        #: Numbers up to here count as received from before a restart (resume).
        self._resumed = 0
        self._inference_window = size or _INFERENCE_WINDOW_WITHOUT_REPLAY

    def infer(self, seq_low: int) -> int:
        """The full sequence number of a packet carrying ``seq_low``.

        Without ESN this is ``seq_low``.  With ESN it is RFC 4303 appendix
        A2.2's choice of the high half, from ``top`` and the window size;
        ``-1`` when the packet would come from before the SA's first number.
        """
        if not self.esn:
            return seq_low
        top = self.top
        window = self._inference_window
        top_low = top & _LOW32
        top_high = top >> 32
        if top_low >= window - 1:
            # Case A: the window lies within one 2^32 subspace.
            if seq_low >= top_low - window + 1:
                high = top_high
            else:
                high = top_high + 1
        else:
            # Case B: the window spans the boundary with the previous subspace.
            if seq_low >= (top_low - window + 1) & _LOW32:
                high = top_high - 1
            else:
                high = top_high
        seq = (high << 32) | seq_low
        if high < 0 or seq > _MAX_SEQ:
            return -1
        return seq

    def check(self, seq: int) -> str | None:
        """``None`` if ``seq`` may be new; else the drop reason.  Changes nothing."""
        if seq <= 0:
            return REPLAY_OLD
        top = self.top
        if seq > top or not self.size:
            return None
        behind = top - seq
        if behind >= self.size:
            return REPLAY_OLD
        if (self.bitmap >> behind) & 1:
            return REPLAY if seq <= self._resumed else DUPLICATE
        return None

    def accept(self, seq: int) -> None:
        """Record an authenticated ``seq``: mark it, sliding the window if it is new."""
        top = self.top
        if seq > top:
            shift = seq - top
            if shift < self.size:
                self.bitmap = ((self.bitmap << shift) | 1) & self._mask
            else:
                self.bitmap = 1 if self.size else 0
            self.top = seq
        elif self.size:
            self.bitmap |= 1 << (top - seq)

    def resume(self, mark: int) -> None:
        """After a restart: treat every number up to *mark* as received.

        The window's top becomes *mark* with every bit set, so anything at or
        below it is a replay, anything above is new, and ESN inference starts
        from the right 2^32 subspace (RFC 4303 appendix A2).
        """
        if mark > self.top:
            self.top = mark
            self.bitmap = self._mask
            self._resumed = mark

    def seen(self, seq: int) -> bool:
        """Whether ``seq`` is marked as received (for tests and diagnostics)."""
        behind = self.top - seq
        return 0 <= behind < self.size and bool((self.bitmap >> behind) & 1)
