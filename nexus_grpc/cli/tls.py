"""``nexus tls dev-cert``: a development CA with a server and a client certificate."""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus tls dev-cert``."""
    tls = commands.add_parser("tls", help="TLS helpers")
    tls.set_defaults(help_of=tls)
    tls_commands = tls.add_subparsers(title="tls commands")
    dev_cert = tls_commands.add_parser(
        "dev-cert",
        help="make a development CA, a server certificate and a client certificate",
        description="Writes ca.crt, server.crt/.key and client.crt/.key (mode 0600) "
        "for trying TLS and mutual TLS on one machine. The CA's key is not kept "
        "(run again with --force for new certificates); not for production.",
    )
    dev_cert.add_argument("--dir", default=".nexus/tls", help="folder for the files")
    dev_cert.add_argument(
        "--name",
        action="append",
        default=[],
        help="DNS name or IP address the server certificate is for (repeatable; "
        "default: localhost and 127.0.0.1 and ::1)",
    )
    dev_cert.add_argument(
        "--client-uri",
        default="spiffe://nexus.dev/client",
        help="URI SAN of the client certificate (its identity for [auth.clients])",
    )
    dev_cert.add_argument(
        "--force", action="store_true", help="replace files already in the folder"
    )
    dev_cert.set_defaults(run=_dev_cert)


def _dev_cert(args: argparse.Namespace) -> int:
    # Imported here: cryptography is only needed by this command.
    from nexus_grpc.tls.certs import TestCA

    folder = Path(args.dir)
    existing = [name for name in ("ca.crt", "server.crt", "client.crt") if (folder / name).exists()]
    if existing and not args.force:
        print(
            f"nexus: {folder} already holds {', '.join(existing)}; pass --force to replace them",
            file=sys.stderr,
        )
        return 1
    dns: list[str] = []
    ips: list[str] = []
    for name in args.name or ["localhost", "127.0.0.1", "::1"]:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    if folder.exists():
        # Someone else's folder (".", /tmp, a shared project): its mode is theirs to
        # choose, but others who may write in it could replace or link the key files.
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o022:
            print(
                f"nexus: {folder} is writable by other users (mode {mode:o}); "
                "private keys do not belong there: pass --dir with a private folder, or a "
                "new one (created 0700)",
                file=sys.stderr,
            )
            return 1
    else:
        folder.mkdir(parents=True, mode=0o700)
        # mkdir's mode is reduced by the umask; the folder is ours, so make it exact.
        os.chmod(folder, 0o700)
    ca = TestCA.create(folder, name="ca")
    server = ca.issue("server", dns=tuple(dns), ips=tuple(ips))
    client = ca.issue("client", uris=(args.client_uri,), client=True)
    print(f"CA certificate (clients trust it):  {ca.cert_file}")
    print(f"server certificate and key:         {server.cert_file} {server.key_file}")
    print(f"client certificate and key:         {client.cert_file} {client.key_file}")
    print("serve with TLS on both ports:")
    for section in ("SERVER", "HTTP"):
        print(f"  export NEXUS_{section}__TLS__CERT_FILE={server.cert_file}")
        print(f"  export NEXUS_{section}__TLS__KEY_FILE={server.key_file}")
    return 0
