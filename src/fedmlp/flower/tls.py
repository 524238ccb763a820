"""Throwaway credentials for a secured federation on this machine (``fedmlp federate --secure``):
a certificate authority, the SuperLink's TLS certificate for 127.0.0.1, and one EC key pair per
SuperNode for Flower's SuperNode authentication. Made offline with ``cryptography``; a real
federation uses certificates from the coordinator's own CA (README: Running across sites).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path  # given to the SuperNodes (--root-certificates) and to flwr (root-certificates)
    server_cert: Path  # the SuperLink's --ssl-certfile
    server_key: Path  # the SuperLink's --ssl-keyfile
    node_private_keys: list[Path]  # each SuperNode's --auth-supernode-private-key
    node_public_keys: list[Path]  # registered with `flwr supernode register`


def _write_key(key, path: Path, ssh: bool = False) -> None:
    from cryptography.hazmat.primitives import serialization

    form = serialization.PrivateFormat.OpenSSH if ssh else serialization.PrivateFormat.PKCS8  # SuperNodes read the SSH form
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()))
    path.chmod(0o600)


def make_credentials(directory: Path, n_nodes: int, host: str = "127.0.0.1", days: int = 2) -> Credentials:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmlp local federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    creds = Credentials(directory / "ca.crt", directory / "superlink.crt", directory / "superlink.key",
                        [directory / f"supernode{i}.key" for i in range(n_nodes)],
                        [directory / f"supernode{i}.pub" for i in range(n_nodes)])
    creds.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    creds.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, creds.server_key)
    for private, public in zip(creds.node_private_keys, creds.node_public_keys):
        key = ec.generate_private_key(ec.SECP384R1())
        _write_key(key, private, ssh=True)
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # Flower wants SSH form
    return creds
