"""vmip.cli."""
