"""The `pollex` command: `serve` runs the service, `config` shows the merged settings."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from pollex import __version__
from pollex.client import bench as client_bench
from pollex.client import polish as polish_client
from pollex.config import NO_BACKEND_MESSAGE, Config, ConfigError, load_config

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pollex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pollex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the polishing service")
    _add_settings_flags(serve)

    show = commands.add_parser("config", help="print the merged settings, secrets redacted")
    _add_settings_flags(show)

    polish = commands.add_parser("polish", help="polish FILE or stdin with a running pollex")
    polish_client.add_arguments(polish)

    bench = commands.add_parser("bench", help="compare models' speed on the same texts")
    client_bench.add_arguments(bench)
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
    args = build_parser().parse_args(argv)
    if args.command == "polish":
        return polish_client.run(args)
    if args.command == "bench":
        return client_bench.run(args)
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
