"""Peer proxies the bench runs in the gateway's place, behind the same rules.

A peer listens on the gateway namespace's redirect port (the shipped rules
send TCP/443 there), so the same wrk, curl and holder loads reach the same
nginx origin through it.  The bench then reads its CPU and RSS the way it
reads etpmitm's.  Each peer is set up for a fair comparison with etpmitm's
defaults: it intercepts (mints a leaf under a CA the lab's clients trust),
verifies the origin against the same trust bundle, logs no content, and
keeps TLS as the origin and the client offer it.

Only SSLsplit so far (Debian's ``sslsplit``): C, libevent, OpenSSL, one
process with a thread pool.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import pki  # bench.py puts the repository on sys.path
from tests.gatewaylab import GATEWAY_PORT, GatewayLab


@dataclass(frozen=True)
class Started:
    """A running peer: its process (CPU and RSS are read from it and its threads) and
    the root a verifying client must trust to go through it."""

    name: str
    process: subprocess.Popen[bytes]
    root: Path
    describe: str


def sslsplit_argv(ca_cert: Path, ca_key: Path, chain: Path, leaf_key: Path, port: int = GATEWAY_PORT) -> list[str]:
    """SSLsplit in the foreground, transparent ("ssl" proxyspec, netfilter's
    original destination), no connection or content log.

    * ``-c``/``-k``: the issuing CA (an intermediate) that forges leaves;
      ``-C``: the rest of the chain to send (its root);
    * ``-K``: one shared ECDSA P-256 leaf key, as etpmitm's default
      ``--leaf-key=ecdsa`` (SSLsplit's default is a fresh 2048-bit RSA key);
    * ``-o VerifyPeer=yes``: verify the origin's chain against OpenSSL's
      default store, which ``SSL_CERT_FILE`` points at the lab's trust bundle
      (:func:`start_sslsplit`);
    * ``-Z``: no TLS compression; ``-u root``: no privilege drop, so it
      reads the lab's 0600 files the way etpmitm does (both run as root in
      the lab); no ``-l``/``-L``/``-S``/``-F``/``-X``: nothing logged
      per connection; no ``-D``: no debug output.
    """
    return [
        "sslsplit", "-Z", "-u", "root",
        "-c", str(ca_cert), "-k", str(ca_key), "-C", str(chain), "-K", str(leaf_key),
        "-o", "VerifyPeer=yes",
        "ssl", "0.0.0.0", str(port),
    ]


def start_sslsplit(env: GatewayLab, work: Path) -> Started:
    """SSLsplit in the gateway namespace on the redirect port, with a CA made now.

    The CA (root, intermediate, leaf key) comes from the lab's test PKI and
    lives in the lab's temporary directory only.
    """
    if shutil.which("sslsplit") is None:
        raise SystemExit("--peer sslsplit needs Debian's sslsplit: apt-get install sslsplit")
    directory = work / "sslsplit"
    directory.mkdir(mode=0o700, exist_ok=True)
    authority = pki.Authority("SSLsplit Bench")
    ca_cert, ca_key = pki.write_pair(directory, "ca", [authority.intermediate], authority.key)
    chain = directory / "chain.pem"
    chain.write_bytes(pki.pem(authority.root))
    root = directory / "root.pem"
    root.write_bytes(pki.pem(authority.root))
    leaf_key = directory / "leaf.key"
    leaf_key.touch(mode=0o600)
    leaf_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    argv = sslsplit_argv(ca_cert, ca_key, chain, leaf_key)
    process = env.lab.gateway.popen(argv, env={"SSL_CERT_FILE": str(env.trust)}, cwd=directory)
    env.lab.gateway.wait_for_port(GATEWAY_PORT, proc=process, timeout=30)
    return Started("sslsplit", process, root, " ".join(argv))


PEERS = {"sslsplit": start_sslsplit}
"""The peers ``bench.py --peer NAME`` can run."""


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """End a gateway or peer process (SIGTERM, then SIGKILL) and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
