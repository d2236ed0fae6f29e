"""vmip.links."""
