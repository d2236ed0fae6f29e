"""vmip.wire."""
