"""vmip.mobility."""
