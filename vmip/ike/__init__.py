"""vmip.ike."""
