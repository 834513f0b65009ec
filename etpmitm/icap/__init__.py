"""An ICAP client (RFC 3507) for content scanning: settings, a sans-IO codec,
and the Twisted glue that implements :class:`etpmitm.scanning.IContentScanner`."""
