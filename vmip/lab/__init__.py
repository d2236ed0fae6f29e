"""vmip.lab."""
