"""`python -m services.storage`: serve the AssetService until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os

from services.common.logs import setup_logging
from services.common.run import run_service
from services.storage.app import running_storage
from services.storage.settings import Settings

log = logging.getLogger("services.storage")


def main() -> None:
    settings = Settings.load(os.environ)
    setup_logging(settings.log_level, "storage")
    # On a signal: health NOT_SERVING, server.stop(grace), then the database closes.
    run_service(settings, lambda: running_storage(settings))
    log.info("storage stopped")


if __name__ == "__main__":
    main()
