"""The `genmesh` command: run the mesh, submit and follow jobs, inspect jobs and providers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc

from genmesh_cli import batch, generate, jobs, providers, up
from genmesh_cli.client import CliError, default_addresses, format_rpc_error

EXIT_INTERRUPTED = 130


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The full command line; defaults that come from the environment are read from `env`."""
    parser = argparse.ArgumentParser(
        prog="genmesh",
        description="genmesh: one front door to many generative-AI providers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    addresses = default_addresses(env)
    up.add_parser(subparsers, env)
    generate.add_parser(subparsers, addresses)
    batch.add_parser(subparsers, addresses)
    jobs.add_parsers(subparsers, addresses)
    providers.add_parser(subparsers, addresses)
    return parser


def run(argv: Sequence[str] | None, env: Mapping[str, str]) -> int:
    """Parse and run one command; every expected failure becomes one line on stderr."""
    try:
        parser = build_parser(env)
    except CliError as error:  # a default from the environment that cannot be used
        print(f"genmesh: {error.message}", file=sys.stderr)
        return error.exit_code
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.env = dict(env)
    try:
        code: int = args.run(args)
        return code
    except CliError as error:
        print(f"genmesh {args.command}: {error.message}", file=sys.stderr)
        return error.exit_code
    except grpc.aio.AioRpcError as error:
        print(f"genmesh {args.command}: {format_rpc_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`); stop quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:], os.environ))
