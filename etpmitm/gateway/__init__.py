"""The Twisted glue: one Connection per device connection (connection.py), and the protocols that report to it."""
