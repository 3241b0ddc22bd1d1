"""The ComfyUI provider family: API-format workflows on a local or remote ComfyUI server."""

from services.providers.comfyui.adapter import ComfyUIAdapter

__all__ = ["ComfyUIAdapter"]
