"""The ICAP client against real c-icap + clamd (tests/icaplab.py) in a lab namespace.

The client runs inside the gateway namespace (tests/icap_scan.py), where
c-icap listens on 127.0.0.1:1344; each scan's result comes back as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.trial.unittest import TestCase

from tests.icaplab import IcapLab, icap_unavailable
from tests.lab import REPO, Lab


class IcapE2ETests(TestCase):
    skip = icap_unavailable()

    def setUp(self) -> None:
        self.lab = Lab()
        self.lab.start()
        self.addCleanup(self.lab.close)
        self.icap = IcapLab(self.lab.gateway, self.lab.workdir / "icap")
        self.icap.start()
        self.addCleanup(self.icap.stop)

    def scan(self, jobs: list[dict[str, Any]], **settings: Any) -> list[dict[str, Any]]:
        config = {"respmod": self.icap.url, "reqmod": self.icap.url, "timeout": 60, **settings}
        done = self.lab.gateway.run(
            [sys.executable, "-m", "tests.icap_scan", json.dumps(config), json.dumps(jobs)],
            timeout=300, env={"PYTHONPATH": str(REPO)},
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def test_eicar_respmod_and_reqmod(self) -> None:
        results = self.scan([{"kind": "respmod", "body": "eicar"}, {"kind": "reqmod", "body": "eicar"}])
        self.assertEqual(len(results), 2)
        for result in results:
            self.assertEqual(result["outcome"], "infected", result)
            self.assertEqual(result["verdict"], "replace")
            self.assertEqual(result["threat"], self.icap.threat)
            self.assertEqual(result["service"], self.icap.url)
            self.assertTrue(result["istag"])
            self.assertIn("403", result["replacement"]["start_line"])
            self.assertIn(self.icap.threat, result["replacement"]["body"])  # c-icap's own block page
            self.assertTrue(result["replacement"]["is_response"])
        self.assertIn(f"VIRUS DETECTED: {self.icap.threat}", self.icap.server_log.read_text())

    def test_clean_bodies(self) -> None:
        size = 50 << 20
        results = self.scan([
            {"kind": "respmod", "body": "none"},
            {"kind": "respmod", "body": "clean", "size": 100},
            {"kind": "respmod", "body": "clean", "size": size},
            {"kind": "reqmod", "body": "clean", "size": 3 << 20},
        ], max_size="64MiB")
        self.assertEqual([(r["outcome"], r["verdict"]) for r in results], [("clean", "pass")] * 4, results)
        big = results[2]
        self.assertEqual(big["body_size"], size)
        # streamed from the spool: the client never held the 50 MiB body (nor a large part of it)
        self.assertLess(big["peak"], 8 << 20, big)

    def test_eicar_after_10_mib(self) -> None:
        # the whole streamed body is scanned, not only the preview
        [result] = self.scan([{"kind": "respmod", "body": "clean+eicar", "size": 10 << 20}])
        self.assertEqual((result["outcome"], result["threat"]), ("infected", self.icap.threat), result)

    def test_oversize(self) -> None:
        results = self.scan([{"kind": "respmod", "body": "eicar"}], max_size=10, oversize="block")
        self.assertEqual((results[0]["outcome"], results[0]["verdict"]), ("oversize", "block"))

    def test_server_down(self) -> None:
        self.icap.stop_icap()
        try:
            closed, opened = self.scan(
                [{"kind": "respmod", "body": "eicar"}], timeout=5
            ), self.scan([{"kind": "respmod", "body": "clean", "size": 10}], timeout=5, on_error="allow")
        finally:
            self.icap.start_icap()
        self.assertEqual((closed[0]["outcome"], closed[0]["verdict"]), ("error", "block"))
        self.assertIn("refused", closed[0]["reason"].lower())
        self.assertEqual((opened[0]["outcome"], opened[0]["verdict"]), ("error", "pass"))
