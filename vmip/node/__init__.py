"""vmip.node."""
