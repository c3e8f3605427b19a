"""`minipacs` command line: serve | echo | store | import | log.

Exit codes scripts can trust:
  0  everything succeeded
  1  partly done: some files failed, were skipped or got a warning status
  2  usage or configuration error
  3  no association: connection refused, timed out, rejected or aborted
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from minipacs import __version__
from minipacs.cli.dcmtk import DcmtkSpelling, translate
from minipacs.cli.exit_codes import EXIT_USAGE
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.net.association import AssociationSettings
from minipacs.net.dul import Timeouts
from minipacs.net.tls import TLSConfigError, client_context
from minipacs.services.outbound import Address, Outbound, OutboundSettings, UserIdentity


def settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--data", type=Path, dest="data_dir", help="data folder (index and files)")


def network_args(p: argparse.ArgumentParser, default_aet: str) -> None:
    p.add_argument("host", help="peer host name or address")
    p.add_argument("port", type=int, help="peer TCP port")
    p.add_argument("-aet", "--calling-aet", default=default_aet, help=f"our (calling) AE title [{default_aet}]")
    p.add_argument("-aec", "--called-aet", default="ANY-SCP", help="peer (called) AE title [ANY-SCP]")
    p.add_argument("-to", "--connect-timeout", type=float, default=15.0, help="TCP connect timeout, s [15]")
    p.add_argument("-ta", "--acse-timeout", type=float, default=30.0, help="ACSE timeout, s [30]")
    p.add_argument("-td", "--dimse-timeout", type=float, default=60.0, help="DIMSE timeout, s [60]")
    p.add_argument("-pdu", "--max-pdu", type=int, default=1024 * 1024, help="maximum PDU we receive [1048576]")
    p.add_argument("--tls", action="store_true", help="DICOM TLS (PS3.15 B.1, port 2762 usually); needs --tls-ca")
    p.add_argument("--tls-ca", metavar="PEM", default="", help="CA certificate(s) the peer's certificate must chain to")
    p.add_argument("--tls-cert", metavar="PEM", default="", help="our certificate, for peers that require one")
    p.add_argument("--tls-key", metavar="PEM", default="", help="the private key of --tls-cert")
    p.add_argument("--tls-crl", metavar="PEM", default="", help="CRLs of the --tls-ca CAs: a revoked peer is refused")
    ident = p.add_argument_group("DICOM user identity (PS3.7 D.3.3.7), as DCMTK storescu --user/--password")
    ident.add_argument(
        "--user",
        metavar="NAME",
        help="username sent when associating: alone type 1, with a password type 2 (username and passcode)",
    )
    secret = ident.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        metavar="PW",
        help="the password (other users of this machine can read it in the process list: prefer the two below)",
    )
    secret.add_argument("--password-env", metavar="VAR", help="read the password from environment variable VAR")
    secret.add_argument("--password-prompt", action="store_true", help="ask for the password (not echoed)")
    ident.add_argument("--pos-response", action="store_true", help="ask the peer to confirm the identity")


def association_settings(args: argparse.Namespace) -> AssociationSettings:
    """What the flags of ``network_args`` say about the association we request."""
    return AssociationSettings(
        ae_title=args.calling_aet,
        max_pdu_receive=args.max_pdu,
        timeouts=Timeouts(acse=args.acse_timeout, dimse=args.dimse_timeout, idle=args.dimse_timeout),
        tls_context=getattr(args, "tls_context", None),
    )


def user_identity(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> UserIdentity | None:
    """The identity the ``--user``/``--password*`` flags of ``network_args`` give (None: none);
    raises ValueError saying what is wrong. ``--password-prompt`` asks here, before anything connects."""
    sources = [
        flag
        for flag, given in (
            ("--password", args.password is not None),
            ("--password-env", args.password_env is not None),
            ("--password-prompt", args.password_prompt),
        )
        if given
    ]
    if not args.user:
        if sources or args.pos_response:
            raise ValueError(f"{(sources or ['--pos-response'])[0]} needs --user NAME (the DICOM user identity)")
        return None
    password: str | None = args.password
    if args.password_env is not None:
        password = environ.get(args.password_env)
        if password is None:
            raise ValueError(f"--password-env {args.password_env}: no such environment variable is set")
    elif args.password_prompt:
        password = getpass.getpass(f"DICOM password for {args.user}: ")
    return UserIdentity(args.user, password, positive_response=args.pos_response)


def outbound(args: argparse.Namespace) -> Outbound:
    """The one outbound path (services/outbound.py), as the flags of ``network_args`` say."""
    return Outbound(
        OutboundSettings(
            association_settings(args),
            connect_timeout=args.connect_timeout,
            local_host=getattr(args, "bind", None),
            user_identity=getattr(args, "user_identity", None),
            find_max_matches=getattr(args, "max_matches", None) or OutboundSettings.find_max_matches,
        )
    )


def peer(args: argparse.Namespace) -> Address:
    """The node the flags of ``network_args`` name: HOST PORT -aec, and --tls."""
    return Address(args.called_aet, args.host, args.port, tls=args.tls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minipacs", description="A mini-PACS with its own asyncio DICOM wire.")
    parser.add_argument("--version", action="version", version=f"minipacs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="informational log messages")
    parser.add_argument("-d", "--debug", action="store_true", help="debug trace: PDUs and DIMSE messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the archive (DICOM listener)")
    settings_args(p)
    p.add_argument("--aet", dest="ae_title", help="our AE title [MINIPACS]")
    p.add_argument("--port", type=int, help="DICOM port [11112]")
    p.add_argument("--host", help="address to listen on [0.0.0.0]")
    p.add_argument("--tls-port", type=int, help="DICOM TLS port, e.g. 2762 (needs tls_cert_file, tls_key_file) [off]")
    p.add_argument("--http-port", type=int, help="HTTP port: REST, DICOMweb, web UI; 0 for none [8042]")
    p.add_argument("--http-host", help="address HTTP listens on [127.0.0.1]")

    p = sub.add_parser("echo", help="C-ECHO a DICOM node (like DCMTK echoscu)")
    network_args(p, "ECHOSCU")
    p.add_argument("-r", "--repeat", type=int, default=1, help="number of C-ECHO requests [1]")
    p.add_argument("--json", action="store_true", help="print the responses as JSON")

    p = sub.add_parser("store", help="send files with C-STORE (like DCMTK storescu +sd)")
    network_args(p, "STORESCU")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (recursive)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON: every file not sent, with why")

    p = sub.add_parser("import", help="import files or folders into the archive")
    settings_args(p)
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (recursive)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON: every file rejected, with why")

    p = sub.add_parser("log", help="show the association log")
    settings_args(p)
    p.add_argument("-n", "--limit", type=int, default=20, help="how many, newest first [20]")
    p.add_argument("--json", action="store_true", help="JSON output")
    for module in _command_modules():
        module.register(sub)
    return parser


#: Commands living in their own module ``minipacs.cli.<name>``; each module has
#: ``register(subparsers)`` (adding a sub-command of that name),
#: ``NEEDS_SETTINGS: bool`` and ``run(args, settings) -> int`` (exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "nodes",
    "move",
    "get",
    "find",
    "users",
    "worklist",
    "ohif",
    "changes",
    "check",
    "backup",
    "conformance",
    "doctor",
    "jobs",
    "retention",
    "labels",
    "overview",
    "anonymize",
    "export",
    "compress",
    "deliveries",
    "rules",
    "modify",
    "merge",
    "split",
    "corrections",
    "audit",
)


class CommandModule(Protocol):
    NEEDS_SETTINGS: bool

    def register(self, sub: Any) -> None: ...

    def run(self, args: argparse.Namespace, settings: Settings | None) -> int: ...


def _command_modules() -> list[CommandModule]:
    return [cast(CommandModule, importlib.import_module(f"minipacs.cli.{name}")) for name in COMMAND_MODULES]


def _configure_logging(args: argparse.Namespace, settings: Settings | None = None) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    if settings is not None and args.command == "serve" and not (args.debug or args.verbose):
        level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    if not args.debug:
        # pydicom's complaints about the values of the files it reads ("Invalid value for VR IS: '1A'")
        # are about the data, once per read, not about the server: -d shows them
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


def _load(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for key in ("data_dir", "ae_title", "port", "host", "tls_port", "http_port", "http_host"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    return load_settings(getattr(args, "config", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        words = translate(sys.argv[1:] if argv is None else argv)
    except DcmtkSpelling as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(words)
    plugins = {name: module for name, module in zip(COMMAND_MODULES, _command_modules(), strict=True)}
    plugin = plugins.get(args.command)
    needs_settings = args.command in ("serve", "import", "log") or (plugin is not None and plugin.NEEDS_SETTINGS)
    try:
        settings = _load(args) if needs_settings else None
    except ConfigError as exc:
        print(f"minipacs: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args, settings)
    if hasattr(args, "tls_ca") and args.tls:  # DICOM TLS flags of network_args: read the files once, here
        if not args.tls_ca:
            print(
                "minipacs: --tls needs --tls-ca FILE: the CA certificate(s) the peer's certificate must chain to",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            args.tls_context = client_context(args.tls_ca, args.tls_cert, args.tls_key, args.tls_crl)
        except TLSConfigError as exc:
            print(f"minipacs: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if hasattr(args, "password_prompt"):  # DICOM user identity flags of network_args
        try:
            args.user_identity = user_identity(args)
        except ValueError as exc:
            print(f"minipacs: {exc}", file=sys.stderr)
            return EXIT_USAGE
    from minipacs.cli import commands

    try:
        if plugin is not None:
            return plugin.run(args, settings)
        if args.command == "serve" and settings is not None:
            return commands.serve(settings)
        if args.command == "echo":
            return asyncio.run(commands.echo(args))
        if args.command == "store":
            return asyncio.run(commands.store(args))
        if args.command == "import" and settings is not None:
            return asyncio.run(commands.import_(settings, args.paths, not args.no_progress, args.json))
        if args.command == "log" and settings is not None:
            return asyncio.run(commands.show_log(settings, args.limit, args.json))
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
