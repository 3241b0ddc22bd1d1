"""The built-in pipelines, and what their steps must answer."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.common.parameters import dict_to_struct

Step = job_pb2.PipelineStep

# The keys image-to-product-copy's answer must have.
COPY_KEYS = ("title", "description", "keywords", "categories")

_IMAGE_PROMPT = (
    "Turn this transcript into one vivid, concrete prompt for an image generator. "
    "Describe the subject, setting, lighting and style; answer with the prompt only.\n\n"
    "Transcript: {transcribe}"
)
_COPY_PROMPT = (
    "Write product copy for an online shop listing of the item described below. Answer with "
    "a JSON object with exactly these keys: title (string), description (string), keywords "
    "(list of strings), categories (list of strings).\n\n"
    "Item: {describe}"
)

BUILTINS: dict[str, tuple[Step, ...]] = {
    "speech-to-image": (
        # The pipeline's prompt, if any, guides each reading step (a language, a focus).
        Step(
            name="transcribe",
            task=job_pb2.TASK_SPEECH_TO_TEXT,
            prompt="{prompt}",
            inputs=["input"],
        ),
        Step(name="enhance", task=job_pb2.TASK_TEXT_TO_TEXT, prompt=_IMAGE_PROMPT),
        Step(
            name="image", task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="{enhance}", enhance_prompt=True
        ),
    ),
    "image-to-product-copy": (
        Step(name="describe", task=job_pb2.TASK_IMAGE_TO_TEXT, prompt="{prompt}", inputs=["input"]),
        Step(
            name="copy",
            task=job_pb2.TASK_TEXT_TO_TEXT,
            prompt=_COPY_PROMPT,
            parameters=dict_to_struct({"response_format": "json"}),
        ),
    ),
    "text-to-video": (
        Step(name="image", task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="{prompt}"),
        Step(name="video", task=job_pb2.TASK_IMAGE_TO_VIDEO, prompt="{prompt}", inputs=["image"]),
    ),
}

# Keys a step's JSON answer must have, by (pipeline, step).
REQUIRED_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("image-to-product-copy", "copy"): COPY_KEYS,
}
