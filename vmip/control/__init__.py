"""vmip.control."""
