"""OpenSSL-style subject strings ("/O=Example/CN=Example TLS Inspection") to and from x509.Name."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "street": NameOID.STREET_ADDRESS,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}
_BY_LOWER_NAME = {name.lower(): oid for name, oid in _ATTRIBUTES.items()}
_SHORT_NAMES = {oid: name for name, oid in _ATTRIBUTES.items()}
_UPPER_BOUNDS = {  # RFC 5280 appendix A upper bounds that cryptography does not enforce
    NameOID.ORGANIZATION_NAME: 64,
    NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
    NameOID.LOCALITY_NAME: 128,
    NameOID.STATE_OR_PROVINCE_NAME: 128,
}


class SubjectSyntaxError(ValueError):
    """The subject string is malformed; the message says where."""


def parse_subject(text: str) -> x509.Name:
    """Parse ``/KEY=value/KEY=value``; a backslash escapes the next character (e.g. ``\\/``)."""
    if not text.startswith("/"):
        raise SubjectSyntaxError(f"subject {text!r} must start with '/', e.g. '/O=Example/CN=Example CA'")
    attributes = [_parse_component(component) for component in _split_components(text[1:])]
    if not attributes:
        raise SubjectSyntaxError("subject is empty")
    return x509.Name(attributes)


def _split_components(body: str) -> list[str]:
    components: list[str] = []
    current: list[str] = []
    characters = iter(body)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise SubjectSyntaxError("subject ends with a lone backslash")
            current.append("\\" + escaped)
        elif character == "/":
            components.append("".join(current))
            current = []
        else:
            current.append(character)
    components.append("".join(current))
    if components and components[-1] == "":
        components.pop()  # tolerate one trailing slash
    return components


def _parse_component(component: str) -> x509.NameAttribute[str]:
    key, separator, raw_value = component.partition("=")
    if not separator or not key:
        raise SubjectSyntaxError(f"subject component {_unescape(component)!r} is not KEY=value")
    oid = _BY_LOWER_NAME.get(key.strip().lower())
    if oid is None:
        known = ", ".join(_ATTRIBUTES)
        raise SubjectSyntaxError(f"unknown subject attribute {key!r} (known: {known})")
    value = _unescape(raw_value)
    if not value:
        raise SubjectSyntaxError(f"subject attribute {key} has an empty value")
    bound = _UPPER_BOUNDS.get(oid)
    if bound is not None and len(value) > bound:
        raise SubjectSyntaxError(f"subject attribute {key} is longer than {bound} characters")
    try:
        return x509.NameAttribute(oid, value)
    except ValueError as e:
        raise SubjectSyntaxError(f"subject attribute {key}: {e}") from None


def _unescape(text: str) -> str:
    out: list[str] = []
    escaped = False
    for character in text:
        if escaped or character != "\\":
            out.append(character)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def format_subject(name: x509.Name) -> str:
    """Render a name in the same ``/KEY=value`` syntax that :func:`parse_subject` reads."""
    if not name.rdns:
        return "(empty)"
    parts: list[str] = []
    for rdn in name.rdns:
        for attribute in rdn:
            key = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
            parts.append(f"/{key}={_escape(value)}")
    return "".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("/", "\\/")


def common_name(name: x509.Name) -> str | None:
    """The first CN of ``name`` as text, if any."""
    return first_text_attribute(name, NameOID.COMMON_NAME)


def first_text_attribute(name: x509.Name, oid: ObjectIdentifier) -> str | None:
    """The first value of attribute ``oid`` in ``name``, if it is text."""
    for attribute in name.get_attributes_for_oid(oid):
        if isinstance(attribute.value, str):
            return attribute.value
    return None
