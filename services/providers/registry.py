"""Which adapter family serves a provider instance; families load only when configured."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping

from services.common.errors import CannotStart
from services.providers.adapter import Adapter
from services.providers.config import CatalogError, ProviderConfig

# family -> "module:factory". A factory takes the instance's ProviderConfig.
FAMILIES: dict[str, str] = {
    "sandbox": "services.providers.sandbox:SandboxAdapter",
    "openai_compatible": "services.providers.openai_compatible:OpenAICompatibleAdapter",
    "ollama": "services.providers.ollama:OllamaAdapter",
    "fal": "services.providers.fal:FalAdapter",
    "replicate": "services.providers.replicate:ReplicateAdapter",
    "runpod": "services.providers.runpod:RunPodAdapter",
    "comfyui": "services.providers.comfyui:ComfyUIAdapter",
    "huggingface": "services.providers.huggingface:HuggingFaceAdapter",
    "gemini": "services.providers.gemini:GeminiAdapter",
    "elevenlabs": "services.providers.elevenlabs:ElevenLabsAdapter",
    "leonardo": "services.providers.leonardo:LeonardoAdapter",
    "runware": "services.providers.runware:RunwareAdapter",
    "pollo": "services.providers.pollo:PolloAdapter",
    "stability": "services.providers.stability:StabilityAdapter",
    "espeak": "services.providers.offline.espeak:EspeakAdapter",
    "pocketsphinx": "services.providers.offline.pocketsphinx:PocketSphinxAdapter",
    "pillow": "services.providers.offline.pillow:PillowAdapter",
}

# The third-party modules adapter families import (beyond what the worker itself does), each
# with the package that provides it. (pocketsphinx is imported by its decoder process only;
# that adapter's check says when it is missing.)
DEPENDENCIES: dict[str, str] = {
    "httpx": "httpx",
    "numpy": "numpy",
    "PIL": "pillow",
    "websockets": "websockets",
}


class MissingDependency(CannotStart):
    """An adapter family needs a package that is not installed: said in one line, with what
    to install."""


def factory(family: str) -> Callable[[ProviderConfig], Adapter]:
    target = FAMILIES.get(family)
    if target is None:
        raise CatalogError(f"unknown provider family {family!r}; known: {', '.join(FAMILIES)}")
    module, _, attr = target.partition(":")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        # Only a dependency that is absent (or too old to have what the adapter imports) is
        # the installation's fault. Any other import failure (a misspelt module or name in
        # the adapter's own imports) is a bug, and keeps its traceback.
        top = (exc.name or "").partition(".")[0]
        if top not in DEPENDENCIES:
            raise
        package = DEPENDENCIES[top]
        if not _installed(top):
            raise MissingDependency(
                f"its adapter needs the Python module {top!r}, which is not installed: "
                f"pip install {package}"
            ) from exc
        raise MissingDependency(
            f"its adapter needs a newer {package} than the one installed ({exc}): "
            f"pip install -U {package}"
        ) from exc
    built: Callable[[ProviderConfig], Adapter] = getattr(loaded, attr)
    return built


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def build_adapter(name: str, catalog: Mapping[str, ProviderConfig]) -> Adapter:
    """An adapter for the instance `name` as the catalog configures it."""
    config = catalog.get(name)
    if config is None:
        known = ", ".join(sorted(catalog)) or "none"
        raise CatalogError(f"provider {name!r} is not in the catalog; known: {known}")
    try:
        build = factory(config.family)
    except (CatalogError, MissingDependency) as exc:
        raise type(exc)(f"provider {name!r}: {exc}") from exc
    # An adapter refuses its options with a CatalogError that names the instance; any other
    # error is a bug, and keeps its traceback.
    return build(config)


def auto_instances(catalog: Mapping[str, ProviderConfig]) -> list[str]:
    """Instances a worker serves by default: those that need no key, or whose key is set."""
    return [name for name, config in catalog.items() if not config.missing_key()]
