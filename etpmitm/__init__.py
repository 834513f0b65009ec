"""etpmitm: a transparent TLS inspection gateway on Twisted."""

__version__ = "0.1.0.dev0"
