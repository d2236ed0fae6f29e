"""The one error type of the link layer."""

from __future__ import annotations

from vmip.errors import VmipError


class LinkError(VmipError):
    """A link or locator problem vmip reports on purpose.

    Raised for configuration that cannot work (an unknown driver, a socket
    that cannot be bound, an endpoint that is not an IP address and port) and
    by the locator table for addresses it cannot parse.  Received datagrams
    never raise: malformed input is dropped and counted.
    """
