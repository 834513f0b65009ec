"""The operator's policy: which connections to intercept, bypass or block.

The policy file is TOML.  Every table and key is optional; unknown ones are
errors::

    [origin]
    untrusted = "block"      # block | untrusted | bypass: when the origin fails
                             # verification: block, mimic with the untrusted CA
                             # (the browser warns), or bypass (splice)

    [traffic]
    non_tls = "passthrough"  # passthrough | close: connections that are not TLS
    ech = "intercept"        # intercept | bypass | close: ClientHellos carrying
                             # encrypted_client_hello.  "intercept" applies the
                             # rules to the outer SNI (the public name); an
                             # intercepted client sees ECH refused and may retry
                             # without it (browsers do), with its real SNI.
                             # "close": decide() says block.

    [learning]               # bypass (SNI, destination) pairs that fail interception
    enabled = true           # (pinning apps, origins that demand a client certificate)
    failures = 2             # failures within `window` seconds before bypassing
    window = 300
    ttl = 3600               # seconds a learned bypass lasts
    max_entries = 10000      # bounds the failures counted and the bypasses kept
    scope = "client"         # client: a bypass applies to the device that failed, and
                             # to every device once `min_clients` devices failed
                             # within `window`; all: one device's failures teach all
    min_clients = 3          # only with scope = "client"

    [inspect]                # intercepted HTTP/1.1 and HTTP/2
    http = true              # false: no HTTP layer, the opaque relay
    strip_quic = true        # remove h3 and other QUIC alternatives from Alt-Svc
    max_headers = 100        # more header fields in one request: 400

    [audit]
    query = false            # true: request paths are logged with their query

    [[rule]]                 # tried in order, the first match wins; no match: intercept
    name = "banks"           # optional, shown in decisions
    match = ["*.bank.example", "health.example", "10.20.0.0/16", "[2001:db8::]/32"]
    action = "bypass"        # intercept | bypass | block
    ports = [443]            # optional: destination ports
    clients = ["192.168.10.0/24"]  # optional: device addresses or networks

    [[rule]]                 # a request rule: has urls and/or methods
    urls = ["good.example/private/*", "*.example.com/api/upload"]
    methods = ["POST", "PUT"]
    action = "block"         # block | intercept (allow); never bypass

Patterns (see :mod:`etpmitm.policy.patterns`): ``host.example`` matches that
name; ``*.example`` matches every name below ``example`` but not ``example``
itself; addresses and networks (``10.0.0.0/8``, ``2001:db8::/32``,
``[2001:db8::1]``) match the original destination address.  To match every
destination, use ``0.0.0.0/0`` and ``::/0``.

Host patterns match the SNI.  Without an SNI they match the names on the
origin's certificate, compared literally like SNI values: any one name
matching is a match, and a certificate name ``*.x.example`` matches the
patterns ``*.x.example`` and ``*.example`` but not ``a.x.example``.
:meth:`Policy.needs_names` says when the decision has to wait for them.

A rule with ``urls`` or ``methods`` is a *request rule*: it never applies to
a connection, only to the requests on intercepted ones
(:meth:`Policy.decide_request`, :mod:`etpmitm.policy.request`); its
``match``, if any, is then optional.  URL patterns are described in
:mod:`etpmitm.policy.urls`.

``[[list]]`` tables (``name``, ``file``, ``action``) name threat list files
(:class:`~etpmitm.policy.listspec.ListSpec`); loading them and where they
stand against the rules is :mod:`etpmitm.threat`'s business.

Learned bypasses (:mod:`etpmitm.learning`) are for the gateway to apply
after the rules, to connections the rules would intercept, so that they never
override a ``block``.
"""

from etpmitm.policy.decide import (
    DEFAULT_POLICY,
    Action,
    Decision,
    ECHMode,
    LearningScope,
    LearningSettings,
    NonTLSMode,
    Policy,
    Rule,
    UntrustedMode,
)
from etpmitm.policy.patterns import (
    HostPattern,
    NetworkPattern,
    Pattern,
    PatternError,
    WildcardPattern,
    parse_network,
    parse_pattern,
)
from etpmitm.policy.schema import PolicyError, load_policy, parse_policy
from etpmitm.policy.urls import UrlPattern, parse_url_pattern

__all__ = [
    "DEFAULT_POLICY",
    "Action",
    "Decision",
    "ECHMode",
    "HostPattern",
    "LearningScope",
    "LearningSettings",
    "NetworkPattern",
    "NonTLSMode",
    "Pattern",
    "PatternError",
    "Policy",
    "PolicyError",
    "Rule",
    "UntrustedMode",
    "UrlPattern",
    "WildcardPattern",
    "load_policy",
    "parse_network",
    "parse_pattern",
    "parse_policy",
    "parse_url_pattern",
]
