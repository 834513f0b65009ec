"""End to end: the policy file, untrusted origins under each action, learning, ECH.

One lab and one gateway started with ``--policy``; each test writes the
policy it needs and reloads it with SIGHUP, as an operator would.
"""

from __future__ import annotations

import html
from typing import Any

from twisted.trial.unittest import TestCase

from tests import pki
from tests.gatewaylab import GatewayLab, shared_lab
from tests.hellos import ech_client_hello, python_client_hello
from tests.lab import Lab, lab_unavailable

ORIGIN, SECOND = Lab.origin_ip, "10.231.2.3"
GOOD, PLAIN = 443, 4480
IPNAMES, PINNED, MTLS = 4431, 4432, 4433
UNTRUSTED = {  # port: (kind, SNI)
    4434: ("expired", "expired.test"),
    4435: ("not-yet-valid", "notyet.test"),
    4436: ("self-signed", "selfsigned.test"),
    4437: ("wrong-host", "wronghost.test"),
    4438: ("unknown-root", "unknownroot.test"),
    4439: ("incomplete-chain", "incomplete.test"),
    4440: ("weak-signature", "sha1.test"),
    4441: ("old-protocol", "tls10.test"),
}
GATEWAY_CN = "etpmitm Intermediate CA"
UNTRUSTED_CN = "etpmitm UNTRUSTED origin - do not trust"
PUBLIC_CN = "Public Test Issuing CA"
REQUEST = "GET / HTTP/1.1\r\nHost: tickets.test\r\nConnection: close\r\n\r\n"

RULES = """
[learning]
failures = 2
window = 300
ttl = 3600

[[rule]]
match = ["*.bypass.test", "exact.test"]
action = "bypass"

[[rule]]
match = ["blocked.test", "10.231.2.3/32"]
action = "block"

[[rule]]
match = ["ipnames.test"]
action = "bypass"
"""


def policy(untrusted: str = "block", traffic: str = "") -> str:
    return f'[origin]\nuntrusted = "{untrusted}"\n\n[traffic]\n{traffic}\n{RULES}'


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[GOOD, PLAIN, IPNAMES, PINNED, MTLS, *UNTRUSTED])
    try:
        env.lab.origin.run(["ip", "addr", "add", f"{SECOND}/24", "dev", "eth0"])
        public, other = env.public, pki.Authority("Unknown Test")
        issuing = public.intermediate
        cert, key = public.issue(["origin.test"], [ORIGIN, Lab.origin_ip6])
        env.origin(GOOD, [cert, issuing], key, extra=["--plain-port", str(PLAIN)])
        cert, key = public.issue(["ipnames.test"])
        env.origin(IPNAMES, [cert, issuing], key)
        cert, key = public.issue(["pinned.test"])
        env.origin(PINNED, [cert, issuing], key)
        cert, key = public.issue(["mtls.test"])
        env.openssl_origin(MTLS, [cert, issuing], key, "-verify", "1", "-CAfile", str(env.trust))
        day = pki.DAY
        cert, key = public.issue(["expired.test"], not_before=pki.NOW - 20 * day, not_after=pki.NOW - 10 * day)
        env.origin(4434, [cert, issuing], key)
        cert, key = public.issue(["notyet.test"], not_before=pki.NOW + 10 * day, not_after=pki.NOW + 20 * day)
        env.origin(4435, [cert, issuing], key)
        cert, key = pki.self_signed(["selfsigned.test"])
        env.origin(4436, [cert], key)
        cert, key = public.issue(["somewhere-else.test"])
        env.origin(4437, [cert, issuing], key)
        cert, key = other.issue(["unknownroot.test"])
        env.origin(4438, [cert, other.intermediate], key)
        cert, key = public.issue(["incomplete.test"])
        env.origin(4439, [cert], key)
        cert, key = pki.issue_sha1(public, ["sha1.test"], env.lab.workdir)
        env.openssl_origin(4440, [cert, issuing], key, "-cipher", "DEFAULT:@SECLEVEL=0")
        cert, key = public.issue(["tls10.test"])
        env.openssl_origin(4441, [cert, issuing], key, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
        env.policy.write_text(policy())
        env.start_gateway("--policy", str(env.policy), "--handshake-timeout", "5")
    except BaseException:
        env.close()
        raise
    return env


class PolicyEndToEndTests(TestCase):
    skip = lab_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def client(self, host: str, port: int, sni: str | None, *extra: str) -> dict[str, Any]:
        args = ["--host", host, "--port", str(port), *extra]
        if sni is not None:
            args += ["--sni", sni]
        return self.env.python_client(*args)

    def assertOriginContent(self, result: dict[str, Any], port: int) -> None:
        self.assertNotIn("error", result)
        if port in (4440, 4441, MTLS):  # openssl s_server -www
            self.assertIn("s_server", result["body"])
        else:
            self.assertEqual(result["body"], "origin ok\n")

    # -- untrusted origins under each action ---------------------------------

    def test_untrustedBlock(self) -> None:
        """block: a trusted leaf and a 502 page that names host and reason; no origin byte."""
        self.env.set_policy(policy("block"))
        for port, (kind, sni) in UNTRUSTED.items():
            result = self.client(ORIGIN, port, sni)
            self.assertNotIn("error", result, kind)
            self.assertEqual(result["issuer_cn"], GATEWAY_CN, kind)
            self.assertEqual(result["status"], "HTTP/1.1 502 Bad Gateway", kind)
            page = html.unescape(result["body"])
            self.assertIn(sni, page, kind)
            self.assertIn(f"origin certificate not trusted ({kind})", page)
            self.assertNotIn("origin ok", page)
            self.assertNotIn("s_server", page)
            self.env.wait_for_log(f"-> {ORIGIN}:{port} sni={sni} action=block outcome=error")

    def test_untrustedBlockOverH2(self) -> None:
        """An h2-only device gets the page over HTTP/2."""
        self.env.set_policy(policy("block"))
        done = self.env.curl("--http2", "-w", "|%{http_code}|%{http_version}",
                             "--resolve", f"expired.test:4434:{ORIGIN}", "https://expired.test:4434/")
        body, status, version = done.stdout.rsplit("|", 2)
        self.assertEqual((done.returncode, status, version), (0, "502", "2"), done.stderr)
        self.assertIn("expired.test", body)

    def test_untrustedMimic(self) -> None:
        """untrusted: the leaf comes from the untrusted CA, so the device warns;
        a user who proceeds gets the (inspected) origin content."""
        self.env.set_policy(policy("untrusted"))
        for port, (kind, sni) in UNTRUSTED.items():
            strict = self.client(ORIGIN, port, sni)
            self.assertIn("CERTIFICATE_VERIFY_FAILED", strict.get("error", ""), kind)
            proceeded = self.client(ORIGIN, port, sni, "--insecure")
            self.assertEqual(proceeded.get("issuer_cn"), UNTRUSTED_CN, kind)
            if kind == "old-protocol":
                # The gateway will not speak TLS 1.0 to the origin: the page
                # explains, under the untrusted CA.
                self.assertIn("origin certificate not trusted (old-protocol)", html.unescape(proceeded["body"]))
            else:
                self.assertOriginContent(proceeded, port)

    def test_untrustedBypass(self) -> None:
        """bypass: spliced, so the device sees the origin's own certificate."""
        self.env.set_policy(policy("bypass"))
        for port, (kind, sni) in UNTRUSTED.items():
            extra = ["--insecure", "--legacy"] if kind == "old-protocol" else ["--insecure"]
            result = self.client(ORIGIN, port, sni, *extra)
            self.assertNotEqual(result.get("issuer_cn"), GATEWAY_CN, kind)
            self.assertNotEqual(result.get("issuer_cn"), UNTRUSTED_CN, kind)
            self.assertOriginContent(result, port)
            line = self.env.wait_for_log(f"-> {ORIGIN}:{port} sni={sni} action=splice")
            self.assertIn(f"({kind})", line)

    # -- rules ---------------------------------------------------------------

    def test_rules(self) -> None:
        """Wildcard and exact-name bypass, name and CIDR block, default intercept."""
        self.env.set_policy(policy())
        for sni in ("a.bypass.test", "deep.a.bypass.test", "exact.test"):
            result = self.client(ORIGIN, GOOD, sni, "--insecure")
            self.assertEqual(result["issuer_cn"], PUBLIC_CN, sni)  # the origin's own certificate
        apex = self.client(ORIGIN, GOOD, "bypass.test", "--insecure")
        self.assertEqual(apex["issuer_cn"], GATEWAY_CN)  # *.bypass.test does not cover bypass.test
        blocked = self.client(ORIGIN, GOOD, "blocked.test")
        self.assertEqual((blocked["issuer_cn"], blocked["status"]), (GATEWAY_CN, "HTTP/1.1 403 Forbidden"))
        self.assertIn("blocked.test", blocked["body"])
        by_address = self.client(SECOND, GOOD, "origin.test")
        self.assertEqual(by_address["status"], "HTTP/1.1 403 Forbidden")
        line = self.env.wait_for_log(f"-> {SECOND}:443 sni=origin.test action=block")
        self.assertIn("10.231.2.3/32", line)
        intercepted = self.client(ORIGIN, GOOD, "origin.test")
        self.assertEqual((intercepted["issuer_cn"], intercepted["body"]), (GATEWAY_CN, "origin ok\n"))

    def test_noSNIMatchedThroughCertificateNames(self) -> None:
        """An IP-only client is matched by the names on the origin's certificate."""
        self.env.set_policy(policy())
        result = self.client(ORIGIN, IPNAMES, None, "--insecure")
        self.assertEqual(result["issuer_cn"], PUBLIC_CN)
        self.assertEqual(result["body"], "origin ok\n")
        line = self.env.wait_for_log(f"-> {ORIGIN}:{IPNAMES} sni=None action=splice")
        self.assertIn("ipnames.test", line)

    # -- reloading -----------------------------------------------------------

    def test_sighupReload(self) -> None:
        """A good file takes effect for new connections; a bad one keeps the old policy."""
        self.env.set_policy(policy())
        self.assertEqual(self.client(ORIGIN, GOOD, "later.test", "--insecure")["issuer_cn"], GATEWAY_CN)
        self.env.set_policy(policy() + '\n[[rule]]\nmatch = ["later.test"]\naction = "bypass"\n')
        self.assertEqual(self.client(ORIGIN, GOOD, "later.test", "--insecure")["issuer_cn"], PUBLIC_CN)
        line = self.env.set_policy('[[rule]]\nmatch = ["later.test"]\naction = "allow"\n',
                                   expect="policy reload failed")
        self.assertIn("policy.toml:3:", line)
        self.assertIn("keeping the previous policy", line)
        self.assertEqual(self.client(ORIGIN, GOOD, "later.test", "--insecure")["issuer_cn"], PUBLIC_CN)
        self.assertEqual(self.client(ORIGIN, GOOD, "origin.test")["body"], "origin ok\n")

    # -- what cannot be intercepted ----------------------------------------------

    def test_pinnedClientLearnedBypass(self) -> None:
        """A device that trusts only the origin's own root fails twice, then is spliced."""
        self.env.set_policy(policy())
        pinned = ["--cafile", str(self.env.trust)]  # argparse: the last --cafile wins
        for attempt in (1, 2):
            result = self.client(ORIGIN, PINNED, "pinned.test", *pinned)
            self.assertIn("CERTIFICATE_VERIFY_FAILED", result.get("error", ""), attempt)
        self.env.wait_for_log("learned bypass for ('pinned.test', '10.231.2.2:4432')")
        result = self.client(ORIGIN, PINNED, "pinned.test", *pinned)
        self.assertEqual((result.get("issuer_cn"), result.get("body")), (PUBLIC_CN, "origin ok\n"), result)
        self.env.wait_for_log(f"-> {ORIGIN}:{PINNED} sni=pinned.test action=splice outcome=ok reason='learned bypass")

    def test_mutualTLSOriginLearnedBypass(self) -> None:
        """An origin that asks for a client certificate is spliced at once, then by learning."""
        self.env.set_policy(policy())
        first = self.client(ORIGIN, MTLS, "mtls.test", "--insecure")
        self.assertEqual(first.get("issuer_cn"), PUBLIC_CN, first)
        self.assertOriginContent(first, MTLS)
        self.env.wait_for_log("learned bypass for ('mtls.test', '10.231.2.2:4433'): origin requests a client certificate")
        second = self.client(ORIGIN, MTLS, "mtls.test", "--insecure")
        self.assertEqual(second.get("issuer_cn"), PUBLIC_CN)
        self.env.wait_for_log(f"-> {ORIGIN}:{MTLS} sni=mtls.test action=splice outcome=ok reason='learned bypass")

    def test_nonTLSPassthroughAndClose(self) -> None:
        self.env.set_policy(policy())
        done = self.env.lab.client.run(["curl", "-sS", "--max-time", "10", f"http://{ORIGIN}:{PLAIN}/"], check=False)
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        self.env.set_policy(policy(traffic='non_tls = "close"'))
        done = self.env.lab.client.run(["curl", "-sS", "--max-time", "10", f"http://{ORIGIN}:{PLAIN}/"], check=False)
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(done.stdout, "")
        line = self.env.wait_for_log(f"-> {ORIGIN}:{PLAIN} sni=None action=close")
        self.assertIn("non_tls = close", line)

    def test_encryptedClientHello(self) -> None:
        """ECH: decided on the outer SNI and logged; "close" closes it."""
        hello = ech_client_hello("public.ech.test")
        self.env.set_policy(policy())
        reply = self.env.send_raw(ORIGIN, GOOD, hello, read=5)
        self.assertTrue(reply.startswith("1603"), reply)  # a ServerHello came back
        self.env.wait_for_log("ech: ")
        self.env.wait_for_log("outer SNI public.ech.test")
        self.env.set_policy(policy(traffic='ech = "close"'))
        self.assertEqual(self.env.send_raw(ORIGIN, GOOD, hello, read=5), "")
        line = self.env.wait_for_log("sni=public.ech.test action=close")
        self.assertIn("encrypted_client_hello", line)

    # -- TLS hygiene -------------------------------------------------------------

    def test_deviceSideHygiene(self) -> None:
        """sslscan against the device-facing side: TLS 1.2+ only, ECDHE+AEAD only."""
        self.env.set_policy(policy())
        done = self.env.lab.client.run(
            # Its own name: a scanner's aborted handshakes look like a pinning
            # client's and may get the name learned into the bypass set.
            ["sslscan", "--no-colour", "--sni-name=scan.test", f"{ORIGIN}:{GOOD}"], check=False, timeout=120
        )
        out = done.stdout
        self.assertEqual(done.returncode, 0, done.stderr)
        for old in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
            self.assertRegex(out, rf"{old}\s+disabled")
        self.assertRegex(out, r"TLSv1\.2\s+enabled")
        self.assertRegex(out, r"TLSv1\.3\s+enabled")
        self.assertIn("Issuer:   etpmitm Intermediate CA", out)  # it scanned the gateway
        self.assertNotRegex(out, r"Compression enabled")
        self.assertNotIn("Insecure session renegotiation supported", out)
        accepted = [line.split() for line in out.splitlines() if line.startswith(("Preferred", "Accepted"))]
        self.assertTrue(accepted, out)
        for fields in accepted:
            version, cipher = fields[1], fields[4]
            if version == "TLSv1.3":
                self.assertRegex(cipher, r"^TLS_(AES_(128|256)_GCM|CHACHA20_POLY1305)_SHA(256|384)$")
            else:
                self.assertEqual(version, "TLSv1.2", fields)
                self.assertRegex(cipher, r"^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$")

    def test_deviceSessionTickets(self) -> None:
        """The device side issues session tickets: a second connection resumes."""
        self.env.set_policy(policy())
        session = self.env.lab.workdir / "session.pem"
        common = ["openssl", "s_client", "-connect", f"{ORIGIN}:{GOOD}", "-servername", "tickets.test",
                  "-CAfile", str(self.env.root), "-ign_eof"]
        first = self.env.lab.client.run([*common, "-sess_out", str(session)], input=REQUEST,
                                        check=False, timeout=30)
        self.assertIn("Verify return code: 0 (ok)", first.stdout, first.stderr)
        second = self.env.lab.client.run([*common, "-sess_in", str(session)], input=REQUEST,
                                         check=False, timeout=30)
        self.assertIn("Reused, TLSv1.3", second.stdout, second.stderr)

    def test_nonHTTPDevicesGetAnAlert(self) -> None:
        """A blocked device that speaks no HTTP gets a TLS access_denied alert, not a page."""
        self.env.set_policy(policy())
        for sni, port in (("blocked.test", GOOD), ("expired.test", 4434)):
            hello = python_client_hello(sni, ["imap"])
            self.assertEqual(self.env.send_raw(ORIGIN, port, hello), "15030300020231", sni)
            line = self.env.wait_for_log(f"sni={sni} action=block")
            self.assertIn("device offered no HTTP protocol", line)
