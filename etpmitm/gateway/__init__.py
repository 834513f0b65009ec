"""Twisted glue: intake, origin connection, device-side TLS and the relay."""
