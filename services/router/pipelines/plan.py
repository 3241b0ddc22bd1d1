"""A pipeline spec checked into ordered steps; each step's job spec wired from earlier outputs."""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from genmesh.v1 import job_pb2
from services.common.errors import InvalidArgument
from services.common.parameters import struct_to_dict
from services.common.tasks import DRAFT_TASKS, INPUT_MEDIA, task_name
from services.prompt import core as prompt_rules
from services.router.pipelines.builtin import BUILTINS, REQUIRED_KEYS

_NAME = re.compile(r"[a-z0-9_-]{1,40}")
_PLACEHOLDER = re.compile(r"\{([a-z0-9_-]{1,40})\}")
# "{prompt}" is the pipeline's prompt and "input" its input asset; no step may take them.
_RESERVED = frozenset({"prompt", "input"})
MAX_STEPS = 20
_TEXT_OUT = frozenset(
    {job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT}
)
# What a step's first output asset is, where every provider agrees (video formats vary).
_OUTPUT_MEDIA: dict[int, str] = {
    **{task: "text/" for task in _TEXT_OUT},
    job_pb2.TASK_TEXT_TO_IMAGE: "image/",
    job_pb2.TASK_IMAGE_TO_IMAGE: "image/",
    job_pb2.TASK_TEXT_TO_SPEECH: "audio/",
}


@dataclass(frozen=True)
class Plan:
    """A valid pipeline: its name ("" for custom steps) and its steps in order."""

    name: str
    steps: tuple[job_pb2.PipelineStep, ...]

    def required_keys(self, step: str) -> tuple[str, ...]:
        return REQUIRED_KEYS.get((self.name, step), ())


def plan(spec: job_pb2.JobSpec, prompt_max_length: int) -> Plan:
    """The pipeline `spec` asks for; InvalidArgument naming the step that is wrong."""
    pipeline = spec.pipeline
    if spec.task:
        raise InvalidArgument(
            "leave task unspecified when pipeline is set; each step names its own task"
        )
    if spec.provider or spec.parameters.fields or spec.enhance_prompt:
        raise InvalidArgument(
            "provider, parameters and enhance_prompt belong on a pipeline's steps, "
            "not on the pipeline"
        )
    if pipeline.name and pipeline.steps:
        raise InvalidArgument("pipeline: give a built-in name or steps, not both")
    if pipeline.name:
        steps = BUILTINS.get(pipeline.name)
        if steps is None:
            raise InvalidArgument(
                f"unknown pipeline {pipeline.name!r}; built in: {', '.join(BUILTINS)}"
            )
    elif not pipeline.steps:
        raise InvalidArgument(f"pipeline needs a built-in name ({', '.join(BUILTINS)}) or steps")
    else:
        steps = tuple(pipeline.steps)
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(f"a pipeline has at most {MAX_STEPS} steps, got {len(steps)}")
    names = {s.name for s in steps}
    earlier: dict[str, job_pb2.Task.ValueType] = {}
    for number, step in enumerate(steps, 1):
        _check_step(spec, step, f"pipeline step {number} ({step.name!r})", earlier, names)
        where = f"pipeline step {step.name!r}"
        _check_prompt(spec, step, earlier, names, prompt_max_length, where)
        earlier[step.name] = step.task
    if spec.input_asset_ids and not any("input" in s.inputs for s in steps):
        raise InvalidArgument("no step reads the pipeline's input asset; drop input_asset_ids")
    return Plan(pipeline.name, steps)


def _check_step(
    spec: job_pb2.JobSpec,
    step: job_pb2.PipelineStep,
    where: str,
    earlier: Mapping[str, job_pb2.Task.ValueType],
    names: set[str],
) -> None:
    if not _NAME.fullmatch(step.name):
        raise InvalidArgument(
            f"{where}: a step name is 1-40 lowercase letters, digits, '-' and '_'"
        )
    if step.name in _RESERVED:
        raise InvalidArgument(f"{where}: {step.name!r} is reserved; name the step otherwise")
    if step.name in earlier:
        raise InvalidArgument(f"{where}: another step already has this name")
    if step.task not in job_pb2.Task.values() or step.task == job_pb2.TASK_UNSPECIFIED:
        raise InvalidArgument(f"{where}: task is required; e.g. TASK_TEXT_TO_IMAGE")
    try:
        # Numbers JSON cannot carry (NaN, infinity) are refused now, not when the step starts.
        struct_to_dict(step.parameters)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc.message}") from exc
    accepted = INPUT_MEDIA.get(step.task)
    task = task_name(step.task)
    if accepted is None and step.inputs:
        raise InvalidArgument(f"{where}: {task} takes no input")
    if accepted is not None and len(step.inputs) != 1:
        raise InvalidArgument(
            f'{where}: {task} takes one input: "input" (the pipeline\'s input asset) '
            "or an earlier step's name"
        )
    for source in step.inputs:
        if source == "input":
            if not spec.input_asset_ids:
                raise InvalidArgument(
                    f"{where} reads the pipeline's input asset, but input_asset_ids is empty; "
                    "upload one with AssetService.UploadAsset"
                )
            continue
        _check_reference(where, source, earlier, names)
        made = _OUTPUT_MEDIA.get(earlier[source])
        if accepted is not None and made is not None and not made.startswith(accepted):
            raise InvalidArgument(
                f"{where}: {task} takes {'/'.join(accepted)}*, but step {source!r} "
                f"({task_name(earlier[source])}) makes {made}*"
            )


def _check_reference(
    where: str, name: str, earlier: Mapping[str, job_pb2.Task.ValueType], names: set[str]
) -> None:
    if name in earlier:
        return
    if name in names:
        raise InvalidArgument(f"{where} uses step {name!r}, which does not come before it")
    raise InvalidArgument(f"{where} uses unknown step {name!r}")


def _check_prompt(
    spec: job_pb2.JobSpec,
    step: job_pb2.PipelineStep,
    earlier: Mapping[str, job_pb2.Task.ValueType],
    names: set[str],
    max_length: int,
    where: str,
) -> None:
    for name in _PLACEHOLDER.findall(step.prompt):
        if name == "prompt" or (name not in earlier and name not in names):
            continue  # the pipeline's prompt, or a name no step has (see check_placeholders)
        _check_reference(where, name, earlier, names)
        if earlier[name] not in _TEXT_OUT:
            raise InvalidArgument(
                f"{where} uses {{{name}}}, but step {name!r} ({task_name(earlier[name])}) "
                "makes no text"
            )
    violations = prompt_rules.validate(
        sample_prompt(step, spec.prompt, earlier), step.task, max_length
    )
    if violations:
        raise InvalidArgument(f"{where}: " + "; ".join(v.message for v in violations))


def sample_prompt(step: job_pb2.PipelineStep, prompt: str, earlier: Container[str]) -> str:
    """The step's prompt as far as it is known before the pipeline runs: the output text of
    the `earlier` steps it names is unknown yet, so a stand-in shows whether it could have one."""
    return render(step.prompt, prompt, lambda name: "text" if name in earlier else None)


def check_placeholders(checked: Plan) -> None:
    """InvalidArgument naming the first step whose prompt has a placeholder that is neither
    {prompt} nor an earlier step's name."""
    # Checked on submit only, not in plan(): pipelines stored before it was checked render
    # such a placeholder as written, and resuming them must not start failing.
    known = {"prompt"}
    for step in checked.steps:
        for name in _PLACEHOLDER.findall(step.prompt):
            if name not in known:
                raise InvalidArgument(
                    f"pipeline step {step.name!r} uses {{{name}}}, which is neither {{prompt}} "
                    "nor an earlier step's name"
                )
        known.add(step.name)


def render(template: str, prompt: str, text_of: Callable[[str], str | None]) -> str:
    """The template with "{prompt}" and "{<step>}" filled in; other braces stay as written."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "prompt":
            return prompt
        text = text_of(name)
        return match.group(0) if text is None else text

    return _PLACEHOLDER.sub(fill, template)


def step_spec(job: job_pb2.Job, plan: Plan, index: int) -> job_pb2.JobSpec:
    """The job spec for step `index` of pipeline job `job`, wired from its earlier steps.

    The same job and step always give the same spec and idempotency key, so a resumed
    pipeline finds the step's job instead of making another."""
    step = plan.steps[index]
    done = {s.name: s for s in job.pipeline.steps[:index]}
    prompt = render(
        step.prompt, job.spec.prompt, lambda n: done[n].output_text if n in done else None
    )
    inputs = []
    for source in step.inputs:
        if source == "input":
            inputs.append(job.spec.input_asset_ids[0])
        elif done[source].assets:
            inputs.append(done[source].assets[0].id)
        else:
            raise InvalidArgument(f"step {source!r} made no asset for step {step.name!r} to use")
    spec = job_pb2.JobSpec(
        task=step.task,
        prompt=prompt,
        input_asset_ids=inputs,
        provider=step.provider,
        enhance_prompt=step.enhance_prompt,
        idempotency_key=f"pipeline:{job.id}:{step.name}",
        priority=job.spec.priority,
        routing_policy=job.spec.routing_policy,
        draft_first=job.spec.draft_first and step.task in DRAFT_TASKS,
    )
    # The pipeline's own budgets carry over; a step outlives the pipeline's deadline by at
    # most its own timeout, and the runner stops it once the pipeline has ended.
    for budget in ("timeout", "attempt_timeout", "hedge_after"):
        if job.spec.HasField(budget):
            getattr(spec, budget).CopyFrom(getattr(job.spec, budget))
    spec.parameters.CopyFrom(step.parameters)
    return spec


def wants_json(step: job_pb2.PipelineStep) -> bool:
    """Whether the step asked its provider for a JSON answer."""
    return struct_to_dict(step.parameters).get("response_format") == "json"
