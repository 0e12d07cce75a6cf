"""The ``tinspect`` console command: helpers around the proxy.

The proxy itself runs under twistd (``twistd -n tinspect ...``); this command
holds the chores around it.  Each subcommand registers itself through a
function in :data:`COMMANDS` that adds its parser and sets ``handler`` to a
function taking the parsed arguments and returning the exit status, so a new
subcommand (``lab``, ``bench``...) is one more function and one more entry.

``tinspect ca`` prints the CA certificate that clients must trust, its SPKI
hash (for Chromium's ``--ignore-certificate-errors-spki-list``) and its
SHA-256 fingerprint (to compare with what a client shows)::

    tinspect ca --generate                 # create the CA on first use
    tinspect ca --pem-only > tinspect-ca.pem
    tinspect ca --der tinspect-ca.cer      # Windows / Android install
    tinspect ca --ca-cert my.pem --ca-key my-key.pem
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tinspect.layers.tls.ca import CA_CERT_FILE, CA_KEY_FILE, CAError, CertificateAuthority, default_state_dir

__all__ = ["COMMANDS", "build_parser", "main"]

#: Exit status for a problem the user can fix (bad file, bad mode...).
EXIT_USAGE = 2


def _add_ca_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tinspect ca``."""
    p = subparsers.add_parser(
        "ca",
        help="print the CA certificate, its SPKI hash and fingerprint",
        description=(
            "Print the CA certificate that clients must trust, with its SPKI SHA-256 "
            "(for Chromium's --ignore-certificate-errors-spki-list) and its SHA-256 "
            "fingerprint.  Without options the CA is read from the default state "
            f"directory ({default_state_dir()}, or $TINSPECT_STATE_DIR)."
        ),
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory holding ca.pem and ca-key.pem; a CA is generated there "
        "if there is none",
    )
    p.add_argument("--ca-cert", metavar="PEM", help="CA certificate file (with --ca-key)")
    p.add_argument("--ca-key", metavar="PEM", help="CA private key file, mode 0600 (with --ca-cert)")
    p.add_argument(
        "--generate",
        action="store_true",
        help="generate the CA in the state directory if it does not exist yet",
    )
    p.add_argument(
        "--der",
        metavar="FILE",
        help="also write the certificate in DER form to FILE (Windows, Android)",
    )
    p.add_argument(
        "--pem-only",
        action="store_true",
        help="print only the PEM certificate, e.g. to redirect it into a file",
    )
    p.set_defaults(handler=_run_ca, _parser=p)


def _run_ca(args: argparse.Namespace) -> int:
    """Load (or generate) the CA and print it; see ``tinspect ca --help``."""
    if (args.ca_cert is None) != (args.ca_key is None):
        args._parser.error("--ca-cert and --ca-key go together")
    if args.ca_cert is not None and (args.state_dir or args.generate):
        args._parser.error("--ca-cert/--ca-key cannot be combined with --state-dir or --generate")

    state_dir = None
    if args.ca_cert is not None:
        ca = CertificateAuthority.load(args.ca_cert, args.ca_key)
    else:
        state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
        if args.state_dir or args.generate:
            ca = CertificateAuthority.load_or_generate(state_dir)
        else:
            cert_path = state_dir / CA_CERT_FILE
            if not cert_path.exists():
                raise CAError(
                    f"{cert_path}: no CA yet; create one with `tinspect ca --generate` "
                    "(or start the proxy once)"
                )
            ca = CertificateAuthority.load(cert_path, state_dir / CA_KEY_FILE)

    if args.der:
        try:
            with open(args.der, "wb") as f:
                f.write(ca.cert_der)
        except OSError as e:
            raise CAError(f"{args.der}: cannot write DER certificate: {e.strerror}") from e

    out = sys.stdout
    if not args.pem_only:
        if state_dir is not None:
            out.write(f"state-dir: {state_dir}\n")
        out.write(f"certificate: {ca.cert_path}\n")
        out.write(f"private-key: {ca.key_path}\n")
        if args.der:
            out.write(f"der: {args.der}\n")
        out.write(f"subject: {ca.cert.subject.rfc4514_string()}\n")
        out.write(f"not-after: {ca.not_after:%Y-%m-%dT%H:%M:%SZ}\n")
        out.write(f"spki-sha256: {ca.spki_sha256}\n")
        out.write(f"sha256-fingerprint: {ca.fingerprint_sha256}\n")
    out.write(ca.cert_pem.decode("ascii"))
    return 0


#: Functions that each register one subcommand on the subparsers object.
def _add_lab_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tinspect lab``."""
    p = subparsers.add_parser(
        "lab",
        help="run tinspect behind TPROXY in a throw-away namespace lab and show what the taps saw (root)",
        description=(
            "Build client, gateway and server network namespaces (documentation addresses only), "
            "start nginx, a TCP echo and a UDP echo in the server, run twistd tinspect in the "
            "gateway behind real TPROXY rules, send sample traffic from the client, print the "
            "results and the taps' log, and clean up. Needs root."
        ),
    )
    p.add_argument("--taps", default="logger", help="taps for the proxy, as twistd tinspect --taps (default: logger)")
    p.add_argument("--tap-option", action="append", default=[], metavar="TAP.KEY=VALUE",
                   help="an option for a tap (repeatable)")
    p.set_defaults(handler=_run_lab)


def _run_lab(args: argparse.Namespace) -> int:
    from tinspect.lab.command import run_lab

    return run_lab(args.taps, args.tap_option)


def _add_har_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tinspect har``."""
    p = subparsers.add_parser(
        "har",
        help="convert a recorder tap's JSON Lines into a HAR 1.2 file",
        description="Convert what the recorder tap wrote (JSON Lines) into HAR 1.2, which browser "
        "developer tools open ('-' for standard output).",
    )
    p.add_argument("recording", help="the recorder's JSON Lines file")
    p.add_argument("har", help="the HAR file to write, or -")
    p.set_defaults(handler=_run_har)


def _run_har(args: argparse.Namespace) -> int:
    from tinspect.taplib.har import convert

    try:
        text = convert(Path(args.recording).read_text(encoding="utf-8"))
    except OSError as e:
        print(f"tinspect har: {args.recording}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"tinspect har: {args.recording}: not a recording: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.har == "-":
        sys.stdout.write(text)
    else:
        Path(args.har).write_text(text, encoding="utf-8")
    return 0


def _add_install_unit_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tinspect install-unit``."""
    p = subparsers.add_parser(
        "install-unit",
        help="install the systemd unit, the gateway's nftables rules and a starter config (root)",
        description="Write tinspect.service (twistd tinspect as the unprivileged user tinspect, with "
        "CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only), tinspect.nft (the TPROXY rules the unit "
        "loads) and, if there is none yet, tinspect.toml. Then: useradd --system tinspect, set LAN "
        "in tinspect.nft, systemctl daemon-reload && systemctl enable --now tinspect.",
    )
    p.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"),
                   help="where the unit goes (default /etc/systemd/system)")
    p.add_argument("--config-dir", type=Path, default=Path("/etc/tinspect"),
                   help="where the rules and the config go (default /etc/tinspect)")
    p.set_defaults(handler=_run_install_unit)


def _run_install_unit(args: argparse.Namespace) -> int:
    from tinspect.ops.unit import find_twistd, install

    try:
        lines = install(args.unit_dir, args.config_dir, find_twistd())
    except OSError as e:
        print(f"tinspect install-unit: {e}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(lines))
    return 0


def _add_cache_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tinspect cache ls|du|purge``."""
    p = subparsers.add_parser(
        "cache",
        help="list, size or purge the entries of a cache tap's directory",
        description="ls: one line per entry (bytes, last used, key, URL), least recently used first; "
        "du: the bytes and entries in all; purge: remove the entries. PATTERN, a regular expression "
        "searched in each entry's URL and key, limits all three. Safe while the proxy runs.",
    )
    p.add_argument("action", choices=("ls", "du", "purge"))
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="only entries whose URL or key it is found in")
    p.add_argument("--dir", required=True, type=Path, help="the cache tap's dir")
    p.set_defaults(handler=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    import time

    from tinspect.taplib.cachedir import entries, purge

    try:
        found = purge(args.dir, args.pattern) if args.action == "purge" else entries(args.dir, args.pattern)
    except ValueError as e:
        print(f"tinspect cache: {e}", file=sys.stderr)
        return EXIT_USAGE
    total = sum(entry.size for entry in found)
    if args.action == "ls":
        for entry in found:
            used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.used))
            print(f"{entry.size:>12}  {used}  {entry.key}  {entry.url}")
    elif args.action == "du":
        print(f"{total}\t{len(found)} entries")
    else:
        print(f"purged {len(found)} entries, {total} bytes")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_ca_command, _add_lab_command, _add_har_command,
                                                                _add_install_unit_command, _add_cache_command]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``tinspect`` argument parser with every registered subcommand.

    Returns:
        The parser; each subcommand sets ``handler`` in its namespace.
    """
    parser = argparse.ArgumentParser(
        prog="tinspect",
        description="Helpers for the tinspect inspection proxy "
        "(the proxy itself runs as `twistd -n tinspect`).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tinspect`` command.

    Args:
        argv: Arguments without the program name; ``None`` means
            ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 for usage errors and for CA
        problems (which are reported as one line on stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except SystemExit as e:
        # argparse exits for --help and usage errors; return the status so
        # callers (and tests) get an int, as for every other outcome.
        if e.code is None:
            return 0
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except CAError as e:
        print(f"tinspect: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
