"""``python -m tessera.gateway``: the gateway process (see ``tessera.gateway.main.run``)."""

from __future__ import annotations

import argparse
import os
import sys

from tessera.gateway.main import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tessera.gateway",
        description="Tessera inference gateway: routes /serve/NAME/... to ready replicas of service NAME.",
    )
    parser.add_argument("--control-url", required=True, help="The control plane's base URL.")
    parser.add_argument(
        "--token",
        default=os.environ.get("TESSERA_GATEWAY_TOKEN"),
        help="Bearer token for the control plane (default: $TESSERA_GATEWAY_TOKEN).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=0, help="Port to listen on (0: a free one).")
    parser.add_argument("--name", default="gateway", help="This gateway's name (a DNS label).")
    parser.add_argument(
        "--advertise-url", default=None, help="Where clients reach it (default http://HOST:PORT)."
    )
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between reports.")
    parser.add_argument("--ready-file", default=None, help="Write the gateway's URL here once listening.")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or $TESSERA_GATEWAY_TOKEN is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(
            args.control_url,
            args.token,
            host=args.host,
            port=args.port,
            name=args.name,
            advertise_url=args.advertise_url,
            interval=args.interval,
            ready_file=args.ready_file,
        )
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:  # e.g. the port is taken
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
