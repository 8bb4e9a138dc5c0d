"""gRPC credentials from an identity folder: ca.crt, tls.crt, tls.key.

Each process gets a folder holding only its own key (least privilege); the
same folder builds its server credentials and its client credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The three PEM files named one by one (`--ssl-ca/--ssl-cert/--ssl-key`)."""

    ca: Path
    cert: Path
    key: Path


TlsSource = Path | TlsFiles


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, source: str | Path | TlsFiles) -> TlsMaterial:
        """From an identity folder, or from three named files."""
        if isinstance(source, TlsFiles):
            missing = [str(p) for p in (source.ca, source.cert, source.key) if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"missing TLS files: {', '.join(missing)}")
            return cls(source.ca.read_bytes(), source.cert.read_bytes(), source.key.read_bytes())
        folder = Path(source)
        missing = [n for n in (CA_FILE, CERT_FILE, KEY_FILE) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: missing {', '.join(missing)} (make them with `strife-certs dev`)"
            )
        return cls(
            ca=(folder / CA_FILE).read_bytes(),
            cert=(folder / CERT_FILE).read_bytes(),
            key=(folder / KEY_FILE).read_bytes(),
        )

    def spiffe_id(self) -> str | None:
        """The SPIFFE id our own certificate carries (None without one)."""
        from strife.security.certs import cert_from_pem, spiffe_id_of

        return spiffe_id_of(cert_from_pem(self.cert))

    def server_credentials(self) -> grpc.ServerCredentials:
        """mTLS: a client without a certificate from our CA cannot connect."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
