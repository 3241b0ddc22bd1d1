"""`python -m services.providers`: a worker serving the configured provider instances."""

from __future__ import annotations

import os

from services.common.logs import setup_logging
from services.common.run import run_service
from services.providers.app import running_worker
from services.providers.settings import Settings


def main() -> None:
    settings = Settings.load(os.environ)
    setup_logging(settings.log_level, "worker")
    run_service(settings, lambda: running_worker(settings))


if __name__ == "__main__":
    main()
