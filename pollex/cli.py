"""The `pollex` command: `serve` runs the service, `config` shows the merged settings."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pollex import __version__
from pollex.config import NO_BACKEND_MESSAGE, Config, ConfigError, load_config

EXIT_USAGE = 2
# The clients, each imported only when its command runs (or for `--help`): the service
# does not carry their code (about 2 MB of RSS).
CLIENTS = {
    "polish": ("pollex.client.polish", "polish FILE or stdin with a running pollex"),
    "bench": ("pollex.client.bench", "compare models' speed on the same texts"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `command`, only that client's options are filled in."""
    parser = argparse.ArgumentParser(prog="pollex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pollex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the polishing service")
    _add_settings_flags(serve)

    show = commands.add_parser("config", help="print the merged settings, secrets redacted")
    _add_settings_flags(show)

    for name, (module, help_text) in CLIENTS.items():
        client = commands.add_parser(name, help=help_text)
        if command in (None, name):
            importlib.import_module(module).add_arguments(client)
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8090)")
    parser.add_argument(
        "--mock", action="store_true", default=None, help="serve the built-in mock backend"
    )


def _settings(args: argparse.Namespace) -> Config:
    flags: dict[str, Any] = {"host": args.host, "port": args.port, "mock": args.mock}
    return load_config(args.config, os.environ, flags)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {"serve", "config", *CLIENTS}
    args = build_parser(argv[0] if argv and argv[0] in known else None).parse_args(argv)
    if args.command in CLIENTS:
        run: Callable[[argparse.Namespace], int] = importlib.import_module(
            CLIENTS[args.command][0]
        ).run
        return run(args)
    try:
        config = _settings(args)
    except ConfigError as exc:
        print(f"pollex: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "config":
        import yaml

        sys.stdout.write(yaml.safe_dump(config.redacted(), sort_keys=False))
        return 0
    return _serve(config)


def _serve(config: Config) -> int:
    if not config.has_backend():
        print(NO_BACKEND_MESSAGE, file=sys.stderr)
        return EXIT_USAGE
    from pollex.log import configure_logging
    from pollex.server import serve

    configure_logging(config.log_format, config.log_level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"pollex: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"pollex: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    return 0
