"""The one exception type of the CA toolkit."""


class CAError(Exception):
    """A CA directory or certificate is unusable or refused; the message is one line."""
