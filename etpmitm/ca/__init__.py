"""The certificate authority toolkit: CA directories, own root, enterprise CSR, install, export.

The gateway needs :func:`load_ca` (or :func:`init_own_root` on first start with
no CA), :func:`load_or_create_leaf_key` and, to mimic origins that fail
verification, :func:`load_or_create_untrusted_ca`; the rest serves ``etpmitm ca``.
"""

from etpmitm.ca.build import CA_KEY_TYPES, CAKeyType
from etpmitm.ca.directory import CAPaths, CertificateAuthority, LeafKeyKind, load_ca
from etpmitm.ca.enroll import create_csr
from etpmitm.ca.errors import CAError
from etpmitm.ca.export import export_root
from etpmitm.ca.install import check_signed, install_signed
from etpmitm.ca.leafkeys import load_or_create_leaf_key
from etpmitm.ca.ownroot import init_own_root
from etpmitm.ca.show import describe_directory
from etpmitm.ca.subject import SubjectSyntaxError, format_subject, parse_subject
from etpmitm.ca.untrusted import load_or_create_untrusted_ca

__all__ = [
    "CA_KEY_TYPES",
    "CAError",
    "CAKeyType",
    "CAPaths",
    "CertificateAuthority",
    "LeafKeyKind",
    "SubjectSyntaxError",
    "check_signed",
    "create_csr",
    "describe_directory",
    "export_root",
    "format_subject",
    "init_own_root",
    "install_signed",
    "load_ca",
    "load_or_create_leaf_key",
    "load_or_create_untrusted_ca",
    "parse_subject",
]
