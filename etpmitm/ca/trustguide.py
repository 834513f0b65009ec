"""How to make devices trust the root: the short guide printed by ``etpmitm ca init``."""

from __future__ import annotations

from pathlib import Path


def trust_guide(root_pem: Path, directory: Path) -> str:
    """Brief per-platform instructions for installing ``root_pem`` as a trusted root."""
    root = str(root_pem)
    return f"""\
Devices must trust the root certificate {root}
Install it on each device (or push it with your MDM / group policy):
  Debian/Ubuntu: sudo cp {root} /usr/local/share/ca-certificates/etpmitm-root.crt && sudo update-ca-certificates
  RHEL/Fedora:   sudo cp {root} /etc/pki/ca-trust/source/anchors/etpmitm-root.pem && sudo update-ca-trust
  Windows:       certutil -addstore -f Root root.pem   (elevated prompt; or GPO: Trusted Root Certification Authorities)
  macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain root.pem
  Firefox:       policies.json {{"policies": {{"Certificates": {{"Install": ["{root}"]}}}}}}
                 (or "ImportEnterpriseRoots": true to use the operating system's store)
A DER copy for tools that want one: etpmitm ca export --dir {directory} --der -o root.der"""
