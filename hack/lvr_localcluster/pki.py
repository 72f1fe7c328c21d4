"""Keys and certificates for the local apiserver: a CA, a serving certificate, a ServiceAccount key pair.

We make our own CA (rather than letting kube-apiserver self-sign with --cert-dir) so that the kubeconfig
can carry `certificate-authority-data` and every client verifies TLS as it would against a real cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

SERVING_NAMES = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"]
SERVING_IPS = ["127.0.0.1", "10.96.0.1"]


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files one cluster uses."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_private_key: Path
    sa_public_key: Path


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(subject: str, public_key, issuer: str, signing_key, *, ca: bool, sans=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(directory: Path, extra_ips: list[str] = ()) -> Pki:
    """Write a fresh CA, a serving cert for 127.0.0.1/localhost/kubernetes.default.svc (and `extra_ips`), and
    SA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.crt", directory / "apiserver.crt", directory / "apiserver.key",
              directory / "sa.key", directory / "sa.pub")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("lvr-local-ca", ca_key.public_key(), "lvr-local-ca", ca_key, ca=True)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in SERVING_NAMES] + [x509.IPAddress(ipaddress.ip_address(i))
                                                           for i in dict.fromkeys([*SERVING_IPS, *extra_ips])]
    serving = _cert("kube-apiserver", serving_key.public_key(), "lvr-local-ca", ca_key, ca=False, sans=sans)
    # ServiceAccount tokens are RS256-signed; the apiserver and controller-manager need an RSA key.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.sa_private_key.write_bytes(_pem_key(sa_key))
    pki.sa_public_key.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for key in (pki.serving_key, pki.sa_private_key):
        key.chmod(0o600)
    return pki
