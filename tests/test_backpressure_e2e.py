"""A slow device must not make the gateway buffer a fast origin's response.

This module has its own lab and gateway (loaded with the shipped nftables
ruleset, where the other end-to-end module uses iptables), so the gateway's
peak memory here is not shaped by other tests.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.gatewaylab import TLS_CLIENT, GatewayLab, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.origin_server import pattern

MB = 1024 * 1024


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[443], backend="nft")
    try:
        cert, key = env.public.issue(["origin.test"], [Lab.origin_ip])
        env.origin(443, [cert, env.public.intermediate], key, alpn=["http/1.1"])
        env.start_gateway()
    except BaseException:
        env.close()
        raise
    return env


def peak_rss(pid: int) -> int:
    """VmHWM: the most memory the process has held at any moment, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class SlowReaderTests(TestCase):
    skip = lab_unavailable("nft")

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def test_nftablesRulesIntercept(self) -> None:
        """The shipped nftables ruleset sends traffic through the gateway too."""
        result = self.env.python_client("--host", Lab.origin_ip, "--sni", "origin.test")
        self.assertEqual(result.get("issuer", {}).get("commonName"), "etpmitm Intermediate CA", result)
        self.assertEqual(result["status"], "HTTP/1.1 200 OK")

    def test_slowReaderKeepsMemoryBounded(self) -> None:
        """A 200 MB response to a device that stalls: the gateway's peak RSS barely moves."""
        assert self.env.gateway is not None
        pid = self.env.gateway.pid
        warm = self.env.python_client("--host", Lab.origin_ip, "--sni", "origin.test", "--path", f"/bytes/{MB}")
        self.assertEqual(warm["length"], MB, warm)
        before = peak_rss(pid)
        size = 200 * MB
        argv = [sys.executable, str(TLS_CLIENT), "--cafile", str(self.env.root), "--host", Lab.origin_ip,
                "--sni", "origin.test", "--path", f"/bytes/{size}", "--stall", "5"]
        done = self.env.lab.client.run(argv, check=False, timeout=300)
        result = json.loads(done.stdout)
        self.assertEqual((result.get("length"), result.get("sha256")), (size, hashlib.sha256(pattern(size)).hexdigest()), result)
        growth = peak_rss(pid) - before
        # Without back-pressure the gateway would hold most of the 200 MB.
        self.assertLess(growth, 32 * MB, f"peak RSS grew by {growth / MB:.1f} MB")
