#!/usr/bin/env bash
# Redirect TCP/443 arriving on the LAN interface(s) to etpmitm (iptables and
# ip6tables, nat table), and reject QUIC (UDP/443) forwarded from them (filter
# table). The nftables equivalent is deploy/nftables.conf; use one or the
# other, not both.
#
# Usage: iptables.sh [--lan-if IF[,IF...]] [--port PORT] [--dports P[,P...]]
#                    [--mark MARK] [--family 4|6|both] [--quic reject|allow]
#                    [--remove]
#
# Every option can also come from the environment (flags win):
#   ETPMITM_LAN_IF    LAN interface(s), comma-separated; each must
#                     exist, except wildcards such as ppp+     (required)
#   ETPMITM_PORT      port etpmitm listens on                  (8443)
#   ETPMITM_DPORTS    destination ports to intercept, <= 15    (443)
#   ETPMITM_MARK      bypass mark: packets with all these bits
#                     set are never redirected nor rejected    (0x1e7)
#   ETPMITM_FAMILY    4, 6 or both                             (both)
#   ETPMITM_QUIC      reject: UDP to the --dports that the LAN
#                     sends through the gateway gets an ICMP
#                     port-unreachable, so browsers fall back
#                     from HTTP/3 (QUIC) to TCP, which is
#                     inspected, at once; allow: forward it
#                     uninspected                              (reject)
#
# Idempotent: the rules live in their own chains, ETPMITM in the nat table and
# ETPMITM in the filter table, which are flushed and refilled on every run;
# PREROUTING and FORWARD hold exactly one jump each. So re-running with other
# settings replaces the old rules. --remove deletes the jumps and the chains
# and succeeds when they are already gone. (Between the flush and the refill,
# a few new connections can go through unredirected.)
#
# Why this does not catch the gateway's own connections to origins: the nat
# PREROUTING hook only sees packets that arrive on an interface, never packets
# that this host generates (those traverse nat OUTPUT). etpmitm's upstream
# connections therefore leave untouched. Do not add an OUTPUT REDIRECT to test
# the gateway from the gateway host itself unless it excludes etpmitm's own
# sockets by owner, e.g.:
#   iptables -t nat -A OUTPUT -p tcp --dport 443 \
#       -m owner ! --uid-owner etpmitm -j REDIRECT --to-ports 8443
# otherwise every upstream connection loops back into the proxy.
#
# Forwarding must be on for everything that is not redirected (and for IPv6 at
# all): see deploy/sysctl.conf. This script only warns when it is off.
set -euo pipefail

readonly CHAIN=ETPMITM
readonly COMMENT=etpmitm

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
    echo "iptables.sh: $*" >&2
    exit 2
}

lan_if=${ETPMITM_LAN_IF:-}
port=${ETPMITM_PORT:-8443}
dports=${ETPMITM_DPORTS:-443}
mark=${ETPMITM_MARK:-0x1e7}
family=${ETPMITM_FAMILY:-both}
quic=${ETPMITM_QUIC:-reject}
remove=no

while [ $# -gt 0 ]; do
    case $1 in
        --lan-if) lan_if=${2:?--lan-if needs a value}; shift 2 ;;
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --dports) dports=${2:?--dports needs a value}; shift 2 ;;
        --mark) mark=${2:?--mark needs a value}; shift 2 ;;
        --family) family=${2:?--family needs a value}; shift 2 ;;
        --quic) quic=${2:?--quic needs a value}; shift 2 ;;
        --remove) remove=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

interface_exists() {
    if command -v ip >/dev/null; then
        ip link show dev "$1" >/dev/null 2>&1
    else
        [ -e "/sys/class/net/$1" ]
    fi
}

is_port() {
    [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

case $family in
    4) commands=(iptables) ;;
    6) commands=(ip6tables) ;;
    both) commands=(iptables ip6tables) ;;
    *) die "--family must be 4, 6 or both, not '$family'" ;;
esac

if [ "$remove" = no ]; then
    [ -n "$lan_if" ] || die "no LAN interface: pass --lan-if or set ETPMITM_LAN_IF"
    is_port "$port" || die "bad --port '$port'"
    IFS=, read -r -a dport_list <<<"$dports"
    # multiport takes at most 15 ports.
    if [ "${#dport_list[@]}" -lt 1 ] || [ "${#dport_list[@]}" -gt 15 ]; then
        die "--dports takes 1 to 15 ports, got '$dports'"
    fi
    for p in "${dport_list[@]}"; do
        is_port "$p" || die "bad port '$p' in --dports"
    done
    # Hex or decimal (no leading 0: bash would read it as octal), not zero:
    # a zero mask would match every packet and disable interception.
    if ! [[ $mark =~ ^(0x[0-9a-fA-F]{1,8}|[1-9][0-9]{0,9})$ ]] ||
        [ $((mark)) -eq 0 ] || [ $((mark)) -gt 4294967295 ]; then
        die "bad --mark '$mark' (a non-zero 32-bit number)"
    fi
    case $quic in
        reject | allow) ;;
        *) die "--quic must be reject or allow, not '$quic'" ;;
    esac
    IFS=, read -r -a if_list <<<"$lan_if"
    for i in "${if_list[@]}"; do
        # Interface names: at most 15 bytes, no '/', no whitespace, no ','.
        [[ $i =~ ^[A-Za-z0-9_.:@+-]{1,15}$ ]] || die "bad interface name '$i'"
        # A typo would leave every device uninspected, silently. A name that
        # ends in '+' is an iptables wildcard (ppp+): it may match nothing yet.
        if [[ $i != *+ ]] && ! interface_exists "$i"; then
            die "no interface '$i' here (see: ip link); for one that comes up later, use a wildcard such as ${i%%[0-9]*}+"
        fi
    done
fi

# One place that runs a nat-table (filter-table) command; -w waits for the
# xtables lock instead of failing when another tool (docker, fail2ban...)
# holds it.
nat() {
    "$cmd" -w 10 -t nat "$@"
}

filter() {
    "$cmd" -w 10 -t filter "$@"
}

# Inserted first so that it applies before any other DNAT in PREROUTING. It
# matches all TCP; the per-interface matches live in the chain so that
# changing --lan-if never leaves a stale jump behind.
jump=(PREROUTING -p tcp -m comment --comment "$COMMENT" -j "$CHAIN")
# The same for forwarded UDP, in the filter table (QUIC).
quic_jump=(FORWARD -p udp -m comment --comment "$COMMENT" -j "$CHAIN")

remove_rules() {
    while nat -C "${jump[@]}" 2>/dev/null; do
        nat -D "${jump[@]}"
    done
    if nat -S "$CHAIN" >/dev/null 2>&1; then
        nat -F "$CHAIN"
        nat -X "$CHAIN"
    fi
    remove_quic_rules
}

remove_quic_rules() {
    while filter -C "${quic_jump[@]}" 2>/dev/null; do
        filter -D "${quic_jump[@]}"
    done
    if filter -S "$CHAIN" >/dev/null 2>&1; then
        filter -F "$CHAIN"
        filter -X "$CHAIN"
    fi
}

# Reject (not drop) forwarded UDP to the intercepted ports from the LAN: the
# ICMP port-unreachable makes a browser give up HTTP/3 at once and use TCP,
# which is redirected above; a silent drop would cost it a timeout first.
install_quic_rules() {
    local reject_with
    case $cmd in
        iptables) reject_with=icmp-port-unreachable ;;
        ip6tables) reject_with=icmp6-port-unreachable ;;
    esac
    if ! filter -S "$CHAIN" >/dev/null 2>&1; then
        filter -N "$CHAIN"
    fi
    filter -F "$CHAIN"
    filter -A "$CHAIN" -m mark --mark "$mark/$mark" -j RETURN
    for i in "${if_list[@]}"; do
        filter -A "$CHAIN" -i "$i" -p udp -m multiport --dports "$dports" \
            -j REJECT --reject-with "$reject_with"
    done
    if ! filter -C "${quic_jump[@]}" 2>/dev/null; then
        filter -I "${quic_jump[@]}"
    fi
}

install_rules() {
    if ! nat -S "$CHAIN" >/dev/null 2>&1; then
        nat -N "$CHAIN"
    fi
    nat -F "$CHAIN"
    # Exempt: packets carrying the bypass mark (set by a mangle rule for
    # devices that must not be inspected, or by whatever marks traffic that
    # etpmitm itself emitted when it re-enters this host, e.g. from a
    # container on the same bridge).
    nat -A "$CHAIN" -m mark --mark "$mark/$mark" -j RETURN
    # Exempt: connections to the gateway's own addresses. Redirecting them
    # would hand the proxy an "original destination" that is itself.
    nat -A "$CHAIN" -m addrtype --dst-type LOCAL -j RETURN
    for i in "${if_list[@]}"; do
        nat -A "$CHAIN" -i "$i" -p tcp -m multiport --dports "$dports" \
            -j REDIRECT --to-ports "$port"
    done
    if ! nat -C "${jump[@]}" 2>/dev/null; then
        nat -I "${jump[@]}"
    fi
    if [ "$quic" = reject ]; then
        install_quic_rules
    else
        remove_quic_rules
    fi
}

warn_forwarding() {
    local key=$1 file=$2
    if [ -r "$file" ] && [ "$(cat "$file")" != 1 ]; then
        echo "iptables.sh: warning: $key is off; see deploy/sysctl.conf" >&2
    fi
}

for cmd in "${commands[@]}"; do
    command -v "$cmd" >/dev/null || die "$cmd not found"
    if [ "$remove" = yes ]; then
        remove_rules
    else
        install_rules
        case $cmd in
            iptables) warn_forwarding net.ipv4.ip_forward /proc/sys/net/ipv4/ip_forward ;;
            ip6tables) warn_forwarding net.ipv6.conf.all.forwarding /proc/sys/net/ipv6/conf/all/forwarding ;;
        esac
    fi
done
