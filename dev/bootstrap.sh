#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian/Ubuntu machine:
# system tools for the namespace lab (as root), then a virtualenv in .venv
# with etpmitm and its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A group per line; the lab's real components (c-icap and clamd for ICAP,
    # rsyslog for the syslog sink, chromium for the browser test, ...).
    packages=(
        iproute2 iptables nftables procps psmisc
        openssl curl ca-certificates wrk nghttp2-client sslscan shellcheck
        chromium libnss3-tools
        c-icap libc-icap-mod-virus-scan clamav-daemon clamav
        rsyslog
        prometheus haproxy
    )
    # The lab starts its own c-icap, clamd, HAProxy, Prometheus and rsyslog inside its
    # namespaces: keep the packages' system services from starting on install (where
    # no policy-rc.d says otherwise; it is removed again).
    guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard"
        chmod 755 "$guard"
        trap 'rm -f "$guard"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    if [ -n "$guard" ]; then
        rm -f "$guard"
        trap - EXIT
    fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q '.[test]'
