"""``decision console``: serve the agent desk, the kiosk screen and the results in a
browser.

    decision console [--server HOST:PORT] [--token-file F] [--tls-ca PEM]
                     [--host 127.0.0.1] [--port 8080] [--password-file F]

The console is a gRPC client of a running server (``decision serve`` or ``decision
demo``), like a web backend. It listens on 127.0.0.1 by default; another address
needs ``--password-file`` (the console's own login; serve it over HTTPS with
``--https-cert/--https-key`` or behind a TLS proxy). The server's token is read from
a file (or ``DECISION_TOKEN``) and stays in the console process.

Also runs on its own: ``python -m decision.console.cli --server ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path

from decision.console import DEFAULT_KINDS

DEFAULT_SERVER = "127.0.0.1:50051"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="the decision server to ask (default %(default)s)")
    p.add_argument("--token-file", metavar="FILE",
                   help="a file holding the bearer token the console sends the server (a "
                        "client with the roles decide and ingest; the results view needs "
                        "report; default: the DECISION_TOKEN environment variable, else "
                        "none)")
    p.add_argument("--tls", action="store_true",
                   help="connect to the server with TLS, trusting the system's roots")
    p.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="the name in the server's certificate, when not the --server host")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--client-key", metavar="PEM", help="client private key (mutual TLS)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the console listens on (default %(default)s; another "
                        "than loopback needs --password-file)")
    p.add_argument("--port", type=int, default=8080,
                   help="port the console listens on; 0 picks a free one (default %(default)s)")
    p.add_argument("--port-file", metavar="PATH",
                   help="once listening, write the port (a number and a newline) to PATH")
    p.add_argument("--password-file", metavar="FILE",
                   help="the console's login: a file whose first line is the password "
                        "(at least 12 characters) every browser must give")
    p.add_argument("--https-cert", metavar="PEM", help="serve the console over HTTPS")
    p.add_argument("--https-key", metavar="PEM", help="the HTTPS certificate's key")
    p.add_argument("--agent-channel", default="contact_center",
                   help="the channel the agent desk decides on (default %(default)s)")
    p.add_argument("--kiosk-channel", default="kiosk",
                   help="the channel the kiosk screen decides on (default %(default)s)")
    p.add_argument("--limit", type=int, default=5,
                   help="next best actions shown to the agent (default %(default)s)")
    p.add_argument("--identifier-kinds", default=",".join(DEFAULT_KINDS), metavar="KIND,KIND",
                   help="identifier kinds offered in the search, first is the default "
                        "(default %(default)s)")
    p.add_argument("--poll-ms", type=int, default=250,
                   help="how often an open customer's profile is read for live updates, "
                        "ms (default %(default)s)")


def add_parser(sub) -> argparse.ArgumentParser:
    """``decision console``, for ``decision.cli.build_parser``'s subparsers."""
    p = sub.add_parser("console", help="serve the agent desk, the kiosk screen and the "
                       "results in a browser, as a client of a running server")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    import uvicorn

    from decision.console.app import ConsoleSettings, create_app
    from decision.console.grpc_client import ServerTarget
    from decision.console.security import Access, is_loopback, password_digest

    if (args.https_cert is None) != (args.https_key is None):
        raise SystemExit("decision console: --https-cert and --https-key go together")
    password = _password(args.password_file)
    if password is None and not is_loopback(args.host):
        raise SystemExit(f"decision console: --host {args.host} is not a loopback address: "
                         "give the console a login (--password-file FILE), or listen on "
                         "127.0.0.1 and reach it through an SSH tunnel")
    try:
        target = ServerTarget.from_files(
            args.server, token_file=args.token_file, tls_ca=args.tls_ca, tls=args.tls,
            client_cert=args.client_cert, client_key=args.client_key,
            tls_server_name=args.tls_server_name)
    except ValueError as exc:
        raise SystemExit(f"decision console: {exc}") from None
    if target.token is None and os.environ.get("DECISION_TOKEN"):
        target = dataclasses.replace(target, token=os.environ["DECISION_TOKEN"])
    kinds = tuple(k.strip() for k in args.identifier_kinds.split(",") if k.strip())
    try:
        settings = ConsoleSettings(
            agent_channel=args.agent_channel, kiosk_channel=args.kiosk_channel,
            agent_limit=args.limit, identifier_kinds=kinds,
            poll_interval_s=args.poll_ms / 1000,
            access=Access(password_sha256=password_digest(password) if password else None,
                          secure_cookie=args.https_cert is not None))
    except ValueError as exc:
        raise SystemExit(f"decision console: {exc}") from None

    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]
    scheme = "https" if args.https_cert else "http"
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if args.port_file:
        _write_port(Path(args.port_file), port)
    print(f"decision console: {scheme}://{shown_host}:{port}/agent (agent desk), "
          f"{scheme}://{shown_host}:{port}/kiosk/<kind>/<value> (kiosk), "
          f"{scheme}://{shown_host}:{port}/results (results); asking "
          f"{target.address}{' over TLS' if target.secured else ''}", flush=True)
    if password is not None and args.https_cert is None and not is_loopback(args.host):
        print("decision console: warning: the password travels in clear over HTTP; use "
              "--https-cert/--https-key or a TLS proxy", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        create_app(target, settings), log_level="warning", access_log=False,
        timeout_graceful_shutdown=2, server_header=False, lifespan="on",
        ssl_certfile=args.https_cert, ssl_keyfile=args.https_key)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if args.port_file:
            Path(args.port_file).unlink(missing_ok=True)
    return 0


def _password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"decision console: --password-file {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    password = lines[0].strip() if lines else ""
    if len(password) < 12:
        raise SystemExit(f"decision console: --password-file {path}: the password (first "
                         "line) must have at least 12 characters")
    return password


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"decision console: cannot listen on {host}:{port}: "
                         f"{exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _write_port(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decision console", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
