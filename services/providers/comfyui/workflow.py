"""ComfyUI workflows: API-format graphs with `{{name}}` placeholders filled in per job.

Placeholder convention (the shipped templates and users' own files follow it): a string input
that is exactly "{{name}}" is replaced by the value with its own type (so "{{seed}}" becomes a
number); "{{name}}" inside a longer string is replaced by the value's text. Names a workflow does
not use are simply not sent; an unknown name is a configuration error caught before any job runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genmesh.v1 import job_pb2
from services.common.tasks import task_from_name, task_name

# Every value a job can place into a workflow.
PLACEHOLDERS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "sampler",
    "scheduler",
    "model",
)
TEMPLATES = Path(__file__).with_name("workflows")
SHIPPED: dict[job_pb2.Task.ValueType, Path] = {
    job_pb2.TASK_TEXT_TO_IMAGE: TEMPLATES / "text_to_image.json",
}
_PATTERN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class WorkflowError(ValueError):
    """A workflow file that cannot be used: unreadable, not API format, unknown placeholder."""


@dataclass(frozen=True)
class Workflow:
    """One API-format graph: node id -> {"class_type", "inputs"}."""

    source: str
    graph: Mapping[str, Any]

    def class_types(self) -> dict[str, str]:
        """Node id -> class_type, to name the node ComfyUI reports progress for."""
        return {node_id: str(node["class_type"]) for node_id, node in self.graph.items()}

    def placeholders(self) -> set[str]:
        """The placeholder names the graph uses."""
        return set(_PATTERN.findall(json.dumps(self.graph)))

    def fill(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the graph with every placeholder replaced by its value."""
        filled: dict[str, Any] = _substitute(dict(self.graph), values, self.source)
        return filled


def load(path: Path) -> Workflow:
    """Read and check an API-format workflow file."""
    try:
        graph = json.loads(path.read_text())
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise WorkflowError(f"workflow {path} is not valid JSON: {exc}") from None
    return parse(graph, str(path))


def parse(graph: Any, source: str) -> Workflow:
    """Check that `graph` is an API-format workflow using only known placeholders."""
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise WorkflowError(
            f"workflow {source} is in ComfyUI's UI format; export it with 'Save (API)' instead"
        )
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"workflow {source} must be a JSON object of nodes")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node or "inputs" not in node:
            raise WorkflowError(
                f"workflow {source}: node {node_id!r} needs class_type and inputs (API format)"
            )
    unknown = sorted(set(_PATTERN.findall(json.dumps(graph))) - set(PLACEHOLDERS))
    if unknown:
        raise WorkflowError(
            f"workflow {source} uses unknown placeholders {unknown}; "
            f"known: {', '.join(PLACEHOLDERS)}"
        )
    return Workflow(source, graph)


def configured_paths(options: Mapping[str, Any]) -> dict[job_pb2.Task.ValueType, Path]:
    """The workflow file per task: the shipped templates, overridden by options.workflows."""
    paths = dict(SHIPPED)
    extra = options.get("workflows", {})
    if not isinstance(extra, Mapping):
        raise WorkflowError('options.workflows must be a table: {"text-to-image" = "file.json"}')
    for name, path in extra.items():
        try:
            task = task_from_name(str(name))
        except ValueError as exc:
            raise WorkflowError(f"options.workflows: {exc}") from None
        if task not in SHIPPED:
            served = ", ".join(task_name(t) for t in SHIPPED)
            raise WorkflowError(f"options.workflows: {name} is not served (served: {served})")
        paths[task] = Path(str(path)).expanduser()
    return paths


def _substitute(value: Any, values: Mapping[str, Any], source: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, values, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, source) for v in value]
    if not isinstance(value, str) or "{{" not in value:
        return value
    whole = _PATTERN.fullmatch(value.strip())
    if whole:
        return _value(whole.group(1), values, source)
    return _PATTERN.sub(lambda m: str(_value(m.group(1), values, source)), value)


def _value(name: str, values: Mapping[str, Any], source: str) -> Any:
    if name not in values:
        raise WorkflowError(f"workflow {source} needs {{{{{name}}}}}, which this job lacks")
    return values[name]
