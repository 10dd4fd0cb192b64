"""Servers the service can start for itself (tests, single-machine setups)."""
