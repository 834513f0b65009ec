"""twistd plugin: ``twistd etpmitm`` runs the gateway."""

from twisted.application.service import ServiceMaker

etpmitm = ServiceMaker(
    "etpmitm",
    "etpmitm.service",
    "Transparent TLS inspection gateway.",
    "etpmitm",
)
