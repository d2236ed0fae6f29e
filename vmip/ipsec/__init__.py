"""vmip.ipsec."""
