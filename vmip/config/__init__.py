"""vmip.config."""
