"""The web page's copy of the built-in pipelines is the router's: no RPC lists them, so the
page keeps its own, and this keeps the two from drifting apart."""

from __future__ import annotations

import json
import re

from gateway.app import STATIC
from genmesh.v1 import job_pb2
from services.router.pipelines.builtin import BUILTINS


def page_pipelines() -> dict[str, list[list[str]]]:
    """The PIPELINES object app.js declares, as data."""
    script = (STATIC / "app.js").read_text()
    found = re.search(r"^const PIPELINES = (\{.*?^\});", script, re.MULTILINE | re.DOTALL)
    assert found, "app.js no longer declares `const PIPELINES = {...};`"
    # A JavaScript literal of strings and arrays: JSON once its trailing commas go.
    parsed: dict[str, list[list[str]]] = json.loads(re.sub(r",(\s*[}\]])", r"\1", found[1]))
    return parsed


def test_the_page_lists_every_built_in_pipeline_with_its_steps() -> None:
    assert page_pipelines() == {
        name: [[step.name, job_pb2.Task.Name(step.task)] for step in steps]
        for name, steps in BUILTINS.items()
    }


def test_each_built_in_pipeline_reads_its_input_in_its_first_step_only() -> None:
    # The page asks for a file of the kind its first step's task takes.
    for name, steps in BUILTINS.items():
        readers = [i for i, step in enumerate(steps) if "input" in step.inputs]
        assert readers in ([], [0]), name
