"""Fault injection: the daemon as a subprocess against a misbehaving gateway and store."""
