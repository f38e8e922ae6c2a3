"""Small certificate authorities for the stack's own TLS, made with openssl.

KEDA's gRPC metrics service and its metrics API server, and the API server's front proxy to
aggregated APIs, each want a CA and a certificate; nothing here is trusted beyond this stack.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca_and_cert(cert_dir: Path, *, common_name: str, ips: tuple[str, ...] = (),
                     dns: tuple[str, ...] = ()) -> None:
    """`ca.crt`/`ca.key` and a `tls.crt`/`tls.key` signed by it, for serving and as a client;
    kept when already there."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    if (cert_dir / "tls.crt").is_file():
        return

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cert_dir)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
            f"/CN={common_name}-ca", "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}", "-keyout",
            "tls.key", "-out", "tls.csr")
    extensions = ["extendedKeyUsage=serverAuth,clientAuth"]
    names = [*(f"IP:{ip}" for ip in ips), *(f"DNS:{name}" for name in dns)]
    if names:
        extensions.append("subjectAltName=" + ",".join(names))
    (cert_dir / "ext.cnf").write_text("\n".join(extensions) + "\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", "ext.cnf", "-out", "tls.crt")


def scaler_certs(out_dir: Path, *names: str) -> Path:
    """The push scaler's mutual TLS, made by the script deployments use too
    (`scripts/scaler-certs.sh`): `server/` for the worker, `client/` for KEDA."""
    from .paths import REPO_ROOT

    subprocess.run([str(REPO_ROOT / "scripts" / "scaler-certs.sh"), str(out_dir), *names],
                   check=True, capture_output=True)
    return out_dir


def scaler_client_secret(out_dir: Path) -> dict[str, str]:
    """The data of the Secret KEDA's TriggerAuthentication reads (SCALER_SECRET_NAME)."""
    return {name: (out_dir / "client" / name).read_text()
            for name in ("ca.crt", "tls.crt", "tls.key")}
