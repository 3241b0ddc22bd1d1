"""`python -m services.router`: GenerateService, JobService and ProviderService."""

from __future__ import annotations

import os

from services.common.logs import setup_logging
from services.common.run import run_service
from services.router.app import running_router
from services.router.settings import Settings


def main() -> None:
    settings = Settings.load(os.environ)
    setup_logging(settings.log_level, "router")
    run_service(settings, lambda: running_router(settings))


if __name__ == "__main__":
    main()
