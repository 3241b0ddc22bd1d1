"""Logging set-up for a service's main()."""

from __future__ import annotations

import logging


def setup_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # The NATS client logs every reconnect attempt at ERROR; our own code reports outages.
    logging.getLogger("nats").setLevel(logging.WARNING)
    # At DEBUG these log every signed request, headers and all: an AWS session token with
    # them. Secrets never reach the logs, whatever the level.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
