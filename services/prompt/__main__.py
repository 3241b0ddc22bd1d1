"""`python -m services.prompt`: serve PromptService until SIGTERM or SIGINT."""

from __future__ import annotations

import os

from services.common.logs import setup_logging
from services.common.run import run_service
from services.prompt.app import running_prompt
from services.prompt.settings import Settings


def main() -> None:
    settings = Settings.load(os.environ)
    setup_logging(settings.log_level, "prompt")
    run_service(settings, lambda: running_prompt(settings))


if __name__ == "__main__":
    main()
