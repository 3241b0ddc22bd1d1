// The genmesh page: submit a job, watch it live, browse the history, see the providers.
// Plain browser JavaScript over the bridge's REST and WebSocket API; no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);
// Tasks that read an uploaded file, and what the file picker offers.
const INPUT_MEDIA = {
  TASK_IMAGE_TO_IMAGE: "image/*",
  TASK_SPEECH_TO_TEXT: "audio/*",
  TASK_IMAGE_TO_TEXT: "image/*",
  TASK_IMAGE_TO_VIDEO: "image/*",
};
const PROMPT_OPTIONAL = new Set(["TASK_SPEECH_TO_TEXT", "TASK_IMAGE_TO_TEXT", "TASK_IMAGE_TO_IMAGE"]);
// Whether `file` is of the kind `accept` ("image/*") names; one the browser cannot type is
// left for the router to judge.
const fileFits = (file, accept) => !file.type || file.type.startsWith(accept.replace("*", ""));
const PAGE_SIZE = 20;
// The mesh's built-in pipelines, each step [name, task] in order (services/router/pipelines/
// builtin.py; no RPC lists them). A pipeline reads its input file, if any, in its first step.
const PIPELINES = {
  "speech-to-image": [["transcribe", "TASK_SPEECH_TO_TEXT"], ["enhance", "TASK_TEXT_TO_TEXT"], ["image", "TASK_TEXT_TO_IMAGE"]],
  "image-to-product-copy": [["describe", "TASK_IMAGE_TO_TEXT"], ["copy", "TASK_TEXT_TO_TEXT"]],
  "text-to-video": [["image", "TASK_TEXT_TO_IMAGE"], ["video", "TASK_IMAGE_TO_VIDEO"]],
};
const PIPELINE_CHOICE = "pipeline:"; // how the task menu's value names a pipeline

const page = {
  providers: [],
  jobs: new Map(), // id -> Job (proto JSON), kept current by the feed
  // Jobs the page is fetching whole (announced by the feed, or a step's pipeline), each with
  // the feed's events for it that come meanwhile, to apply once it is in.
  fetching: new Map(),
  nextPage: "",
  listed: false, // whether the history has loaded once
  watch: null, // the JobWatch of the job on show
  paramsKey: "",
  today: new Date().toDateString(), // the day the history's dates were written on
};

const taskName = (task) => task.replace(/^TASK_/, "").toLowerCase().replaceAll("_", "-");
// A pipeline's spec has no task of its own (TASK_UNSPECIFIED): it is named by its pipeline.
const jobKind = (spec) =>
  spec.pipeline ? `pipeline ${spec.pipeline.name || "(own steps)"}` : taskName(spec.task || "");
const stateName = (state) => (state || "").replace(/^JOB_STATE_/, "").toLowerCase();
const seq = (value) => Number(value || 0);
const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
const contentUrl = (asset) => `/v1/assets/${encodeURIComponent(asset.id)}/content`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(node, rest);
  if (dataset) Object.assign(node.dataset, dataset);
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    // fetch's own words ("Failed to fetch") say nothing of what to do.
    throw new Error("cannot reach the genmesh gateway; check that it is running, then try again");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { code: `HTTP ${response.status}`, message: response.statusText };
    throw new Error(`${error.code}: ${error.message}`);
  }
  return body;
}

// ---- a job's state, as the router folds events into it ---------------------------------------

function applyEvent(job, event) {
  job.state = event.state;
  job.last_sequence = event.sequence;
  if (event.time) job.update_time = event.time;
  if (event.provider) job.provider = event.provider;
  if (event.progress) job.progress = event.progress;
  if (event.preview) job.preview = event.preview;
  const ended = TERMINAL.has(event.state);
  if (job.pipeline) {
    foldStep(job.pipeline, event, ended);
    if (event.step && !ended) return; // a step's outputs are the step's; the pipeline's are its last step's
  }
  copyOutcome(job, event);
}

function copyOutcome(target, event) {
  if (event.assets && event.assets.length) target.assets = event.assets;
  if (event.output_text) target.output_text = event.output_text;
  if (event.error) target.error = event.error;
}

// A pipeline job's event moves its steps on, as the router folds it (pipelines/status.py): a
// step event with outputs completes the step, one with a preview shows it, any other marks it
// running; once the pipeline ends, a step that never started is CANCELLED.
function foldStep(run, event, ended) {
  const status = event.step ? (run.steps || []).find((s) => s.name === event.step) : null;
  if (status) {
    if (event.step_job_id) status.job_id = event.step_job_id;
    if (ended) status.state = event.state;
    else if ((event.assets && event.assets.length) || event.output_text) status.state = "JOB_STATE_COMPLETED";
    else if (event.preview) status.state = "JOB_STATE_PREVIEW_READY";
    else if (status.state !== "JOB_STATE_PREVIEW_READY") status.state = "JOB_STATE_PROCESSING";
    copyOutcome(status, event);
  }
  if (!ended) return;
  for (const step of run.steps || []) {
    if (!TERMINAL.has(step.state)) step.state = step.job_id ? event.state : "JOB_STATE_CANCELLED";
  }
}

// ---- providers ------------------------------------------------------------------------------

async function loadProviders() {
  try {
    page.providers = (await api("/v1/providers")).providers;
  } catch (error) {
    $("provider-list").replaceChildren(el("li", { className: "error", textContent: error.message }));
    return;
  }
  renderProviders();
  fillTasks();
}

function renderProviders() {
  $("provider-list").replaceChildren(
    ...page.providers.map((p) => {
      const status = (p.health.status || "").replace("PROVIDER_STATUS_", "").toLowerCase();
      const health = `${status}${p.health.reason ? ` — ${p.health.reason}` : ""}`;
      const workers = `${p.health.live_workers} worker(s), ${p.health.in_flight} running`;
      return el(
        "li",
        { className: "provider", dataset: { provider: p.name } },
        el("span", { className: "name", textContent: `${p.name} ` },
          el("span", { className: "muted", textContent: p.family + (p.offline ? " · offline" : "") })),
        el("span", { className: `health-${status}`, textContent: health }),
        el("span", { className: "muted", textContent: `${workers} · $${p.cost_per_job_usd}/job` }),
        el("span", { className: "chips" },
          ...p.tasks.map((t) => el("span", { className: "chip", textContent: taskName(t) }))),
      );
    }),
  );
}

// Whether an available provider serves `task`, so that a pipeline step of it can start.
const served = (task) =>
  page.providers.some((p) => p.tasks.includes(task) && p.health.status === "PROVIDER_STATUS_AVAILABLE");

function pipelineOptions() {
  return Object.entries(PIPELINES).map(([name, steps]) => {
    const down = !steps.every(([, task]) => served(task));
    return el("option", { value: PIPELINE_CHOICE + name, textContent: `pipeline ${name}${down ? " (unavailable)" : ""}` });
  });
}

function fillTasks() {
  const tasks = [];
  for (const p of page.providers) for (const t of p.tasks) if (!tasks.includes(t)) tasks.push(t);
  tasks.sort();
  for (const select of [$("task"), $("filter-task")]) {
    const keep = select.value;
    const options = tasks.map((t) => el("option", { value: t, textContent: taskName(t) }));
    if (select.id === "filter-task") {
      options.unshift(el("option", { value: "", textContent: "any" }));
      select.replaceChildren(...options);
    } else {
      select.replaceChildren(
        el("optgroup", { label: "Tasks" }, ...options),
        el("optgroup", { label: "Pipelines (several steps)" }, ...pipelineOptions()),
      );
    }
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
    else if (select.id === "task" && tasks.includes("TASK_TEXT_TO_IMAGE")) select.value = "TASK_TEXT_TO_IMAGE";
  }
  fillProviders();
}

// The pipeline chosen in the task menu, or "" for a single task.
const chosenPipeline = () =>
  $("task").value.startsWith(PIPELINE_CHOICE) ? $("task").value.slice(PIPELINE_CHOICE.length) : "";

// What the form asks for: the input file's kind (or none) and whether a prompt is optional.
// A pipeline asks what its first step does, as the router decides (services/common/tasks.py).
function chosenNeeds() {
  const pipeline = chosenPipeline();
  const task = pipeline ? PIPELINES[pipeline][0][1] : $("task").value;
  return { what: pipeline || taskName(task), accept: INPUT_MEDIA[task], promptOptional: PROMPT_OPTIONAL.has(task) };
}

function fillProviders() {
  const task = $("task").value;
  const select = $("provider");
  // Each step of a pipeline is routed on its own.
  select.disabled = Boolean(chosenPipeline());
  if (select.disabled) {
    select.replaceChildren(el("option", { value: "", textContent: "automatic, per step" }));
    renderForm();
    return;
  }
  const keep = select.value;
  const serving = page.providers.filter((p) => p.tasks.includes(task));
  select.replaceChildren(
    el("option", { value: "", textContent: "automatic" }),
    ...serving.map((p) => {
      const down = p.health.status !== "PROVIDER_STATUS_AVAILABLE";
      return el("option", { value: p.name, textContent: p.name + (down ? " (unavailable)" : "") });
    }),
  );
  if (serving.some((p) => p.name === keep)) select.value = keep;
  renderForm();
}

// ---- the submit form -------------------------------------------------------------------------

function parameterSpecs() {
  const task = $("task").value;
  if (chosenPipeline()) return []; // its steps take their providers' defaults
  const applies = (spec) => !spec.tasks.length || spec.tasks.includes(task);
  const chosen = $("provider").value;
  if (chosen) {
    const provider = page.providers.find((p) => p.name === chosen);
    return provider ? provider.parameters.filter(applies) : [];
  }
  // Automatic: only what every available provider of the task accepts.
  const serving = page.providers.filter(
    (p) => p.tasks.includes(task) && p.health.status === "PROVIDER_STATUS_AVAILABLE",
  );
  if (!serving.length) return [];
  return serving[0].parameters
    .filter(applies)
    .filter((spec) => serving.every((p) => p.parameters.some((q) => q.name === spec.name && applies(q))));
}

function parameterInput(spec) {
  const id = `param-${spec.name}`;
  const shown = spec.default_value === undefined || spec.default_value === null ? "" : String(spec.default_value);
  let input;
  if (spec.allowed_values.length || spec.type === "PARAMETER_TYPE_BOOLEAN") {
    const values = spec.allowed_values.length ? spec.allowed_values : ["true", "false"];
    input = el("select", { id, name: id },
      el("option", { value: "", textContent: shown ? `default (${shown})` : "default" }),
      ...values.map((v) => el("option", { value: v, textContent: v })));
  } else if (spec.type === "PARAMETER_TYPE_INTEGER" || spec.type === "PARAMETER_TYPE_NUMBER") {
    input = el("input", {
      id, name: id, type: "number", placeholder: shown,
      step: spec.type === "PARAMETER_TYPE_INTEGER" ? "1" : "any",
    });
    if (spec.minimum !== undefined) input.min = spec.minimum;
    if (spec.maximum !== undefined) input.max = spec.maximum;
  } else {
    input = el("input", { id, name: id, type: "text", placeholder: shown });
  }
  input.dataset.param = spec.name;
  input.dataset.type = spec.type;
  const range = spec.minimum !== undefined || spec.maximum !== undefined
    ? ` (${spec.minimum ?? ""}…${spec.maximum ?? ""})` : "";
  return el("label", { title: spec.description },
    el("span", { textContent: spec.name + range }), input,
    el("span", { className: "hint", textContent: spec.description }));
}

function renderForm() {
  const task = $("task").value;
  const specs = parameterSpecs();
  const key = `${task}|${$("provider").value}|${specs.map((s) => s.name).join(",")}`;
  if (key !== page.paramsKey) {
    page.paramsKey = key;
    const entered = Object.fromEntries(
      [...document.querySelectorAll("[data-param]")].map((i) => [i.dataset.param, i.value]));
    const inputs = specs.map(parameterInput);
    const none = chosenPipeline() ? "A pipeline's steps use their providers' defaults."
      : "No parameters for this choice.";
    $("params").replaceChildren(
      el("legend", { textContent: "Parameters" }),
      specs.length ? el("div", { className: "param-grid" }, ...inputs)
        : el("p", { className: "muted", textContent: none }));
    for (const input of document.querySelectorAll("[data-param]")) {
      if (entered[input.dataset.param]) input.value = entered[input.dataset.param];
    }
  }
  const { accept, promptOptional } = chosenNeeds();
  $("input-label").hidden = !accept;
  $("input-file").accept = accept || "";
  // A file picked for another task would be uploaded, then refused by the router.
  const picked = $("input-file").files[0];
  if (picked && !(accept && fileFits(picked, accept))) $("input-file").value = "";
  // As the router decides (services/common/tasks.py): image-to-video reads a file and still
  // needs a prompt.
  $("prompt").required = !promptOptional;
  $("prompt-label").firstChild.textContent = promptOptional ? "Prompt (optional)" : "Prompt";
  const pipeline = chosenPipeline();
  $("pipeline-steps").hidden = !pipeline;
  $("pipeline-steps").textContent = pipeline
    ? `Steps: ${PIPELINES[pipeline].map(([name, t]) => `${name} (${taskName(t)})`).join(" → ")}` : "";
}

function collectParameters() {
  const out = {};
  for (const input of document.querySelectorAll("[data-param]")) {
    if (input.value === "") continue;
    const type = input.dataset.type;
    if (type === "PARAMETER_TYPE_INTEGER") out[input.dataset.param] = parseInt(input.value, 10);
    else if (type === "PARAMETER_TYPE_NUMBER") out[input.dataset.param] = parseFloat(input.value);
    else if (type === "PARAMETER_TYPE_BOOLEAN") out[input.dataset.param] = input.value === "true";
    else out[input.dataset.param] = input.value;
  }
  return out;
}

async function submitJob(event) {
  event.preventDefault();
  const button = $("submit");
  button.disabled = true;
  $("submit-error").textContent = "";
  let upload = null; // the input file's name and its asset's id, once uploaded
  try {
    const pipeline = chosenPipeline();
    // A pipeline's provider and parameters are its steps' own: the spec has none.
    const spec = pipeline
      ? { pipeline: { name: pipeline }, prompt: $("prompt").value }
      : {
        task: taskName($("task").value),
        prompt: $("prompt").value,
        provider: $("provider").value,
        parameters: collectParameters(),
      };
    const { what, accept } = chosenNeeds();
    if (accept) {
      const file = $("input-file").files[0];
      if (!file) throw new Error(`${what} needs an input file`);
      if (!fileFits(file, accept)) throw new Error(`${what} takes ${accept}; ${file.name} is ${file.type}`);
      const form = new FormData();
      form.append("file", file);
      button.textContent = "Uploading…";
      upload = { name: file.name, id: (await api("/v1/assets", { method: "POST", body: form })).id };
      spec.input_asset_ids = [upload.id];
    }
    button.textContent = "Submitting…";
    const job = await api("/v1/jobs", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(spec),
    });
    remember(job, "top");
    showJob(job.id);
    reveal();
  } catch (error) {
    // The router names the input by its asset's id, which the person never saw: name the
    // file they picked instead ("pipeline step 1 ('describe'): input asset 'photo.heic' is …").
    $("submit-error").textContent = upload ? error.message.replaceAll(upload.id, upload.name) : error.message;
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
}

// ---- one job, live -------------------------------------------------------------------------

// Follows one job over its WebSocket; after a drop it reconnects after the last sequence seen.
class JobWatch {
  constructor(id) {
    this.id = id;
    this.job = null;
    this.after = 0;
    this.stopped = false;
    this.delay = 500;
    this.reason = ""; // why the mesh ended the last stream, when it said
    this.connect();
  }

  connect() {
    const path = `/v1/jobs/${encodeURIComponent(this.id)}/ws?after_sequence=${this.after}`;
    const socket = new WebSocket(wsUrl(path));
    this.socket = socket;
    socket.onopen = () => { this.delay = 500; };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (!data.error) $("job-link").textContent = "";
      this.receive(data);
    };
    socket.onclose = (closed) => {
      if (this.stopped || closed.code === 1000) return;
      if (closed.code === 4404 || closed.code === 4400) return; // nothing to retry
      // Until a message comes again, the state shown may be stale: say so, not just in the
      // header's feed dot.
      const why = this.reason ? ` (${this.reason})` : "";
      this.reason = "";
      $("job-link").textContent = `connection lost${why}; reconnecting…`;
      setTimeout(() => this.stopped || this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }

  receive(message) {
    if (message.job) {
      this.job = message.job;
      this.after = Math.max(this.after, seq(message.job.last_sequence));
    } else if (message.event) {
      if (seq(message.event.sequence) <= this.after && this.job) return;
      this.after = seq(message.event.sequence);
      if (this.job) applyEvent(this.job, message.event);
    } else if (message.error) {
      const { code, message: text } = message.error;
      if (code === "NOT_FOUND" || code === "INVALID_ARGUMENT") {
        $("job-error").textContent = text; // final: the socket closes and is not retried
      } else if (code === "UNAVAILABLE") {
        // The watch failed, not the job: shown as the job's error, it read as a failed job.
        this.reason = "the router is unavailable";
      } else if (code !== "RESOURCE_EXHAUSTED") {
        this.reason = text;
      }
      return;
    }
    if (this.job) {
      renderJob(this.job);
      remember(structuredClone(this.job));
    }
  }

  stop() {
    this.stopped = true;
    this.socket.close();
  }
}

function showJob(id) {
  if (page.watch && page.watch.id === id) return;
  if (page.watch) page.watch.stop();
  $("job").hidden = false;
  $("job-id").textContent = id;
  // Nothing of the job shown before may stay under this id until (or unless) it loads.
  for (const field of ["job-state", "job-provider", "job-elapsed", "job-prompt", "progress-text"]) {
    $(field).textContent = "";
  }
  $("job-state").className = "state";
  delete $("job-state").dataset.state;
  $("progress-fill").style.width = "0%";
  $("cancel").hidden = true;
  $("job-error").textContent = "";
  $("job-link").textContent = "";
  $("preview").replaceChildren(el("h3", { textContent: "Preview" }));
  $("result").replaceChildren(el("h3", { textContent: "Result" }));
  $("preview").hidden = true;
  $("result").hidden = true;
  delete $("result").dataset.jobId;
  $("job-steps").replaceChildren();
  $("job-steps").hidden = true;
  $("job-parent").replaceChildren();
  $("job-parent").hidden = true;
  delete $("job-parent").dataset.jobId;
  for (const row of document.querySelectorAll("#history-list li, #history-list .row-step")) {
    row.classList.toggle("selected", row.dataset.jobId === id);
  }
  page.watch = new JobWatch(id);
  // In the address, so a reload (or a copied link) comes back to this job and its live state.
  history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
}

// On a phone the cards stack (form, job, history): the job card may be a screen or more away
// from the button or history row that opened it.
function reveal() {
  const box = $("job").getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight) $("job").scrollIntoView({ behavior: "smooth" });
}

function jobInAddress() {
  return new URLSearchParams(location.hash.slice(1)).get("job") || "";
}

function formatBytes(n) {
  n = Number(n);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function mediaFor(asset, id) {
  const src = contentUrl(asset);
  const type = asset.media_type || "";
  // The sandbox's "video" is an animated GIF: an <img> plays it.
  if (type.startsWith("image/")) return el("img", { id, className: "media", src, alt: asset.filename || "image" });
  if (type.startsWith("audio/")) return el("audio", { id, className: "media", src, controls: true });
  if (type.startsWith("video/")) return el("video", { id, className: "media", src, controls: true, loop: true });
  return null;
}

function assetMeta(asset) {
  const parts = [asset.media_type, formatBytes(asset.size_bytes)];
  if (asset.width) parts.push(`${asset.width}×${asset.height}`);
  if (asset.duration_seconds) parts.push(`${asset.duration_seconds.toFixed(1)} s`);
  parts.push(`sha256 ${asset.sha256.slice(0, 12)}…`);
  return el("div", { className: "meta" },
    ...parts.map((p) => el("span", { textContent: p })),
    el("a", { href: contentUrl(asset), download: asset.filename || asset.id, textContent: "download" }));
}

function renderJob(job) {
  const state = stateName(job.state);
  const badge = $("job-state");
  badge.textContent = state.replace("_", " ");
  badge.className = `state ${state}`;
  badge.dataset.state = job.state;
  const spec = job.spec || {};
  // A pipeline has no provider of its own: each step names its own.
  $("job-provider").textContent = job.provider ? `on ${job.provider}` : spec.pipeline ? jobKind(spec) : "";
  $("job-prompt").textContent = job.spec && job.spec.prompt ? `“${job.spec.prompt}”` : "";
  $("cancel").hidden = TERMINAL.has(job.state);
  $("job-error").textContent = job.error && job.error.message ? job.error.message : "";

  const progress = job.progress || {};
  const done = job.state === "JOB_STATE_COMPLETED";
  $("progress-fill").style.width = `${done ? 100 : progress.percent || 0}%`;
  const queued = progress.queue_position !== undefined ? `${progress.queue_position} ahead in the queue` : "";
  $("progress-text").textContent = TERMINAL.has(job.state) ? "" : progress.message || queued;
  $("progress-box").hidden = TERMINAL.has(job.state) && !done;

  if (job.preview && job.preview.id) {
    const box = $("preview");
    const current = box.querySelector(".media");
    if (!current || current.dataset.assetId !== job.preview.id) {
      const media = mediaFor(job.preview, "preview-media");
      if (media) {
        media.dataset.assetId = job.preview.id;
        box.replaceChildren(el("h3", { textContent: "Preview" }), media);
      }
    }
    box.hidden = false;
  }
  renderParent(job);
  renderSteps(job);
  if (done && $("result").dataset.jobId !== job.id) {
    renderResult(job);
  }
  tickElapsed();
}

// A step's job names its step and links back to its pipeline.
function renderParent(job) {
  const line = $("job-parent");
  line.hidden = !job.parent_job_id;
  if (!job.parent_job_id || line.dataset.jobId === job.id) return;
  line.dataset.jobId = job.id;
  line.replaceChildren(
    `step ${job.pipeline_step} of pipeline `,
    jobLink(job.parent_job_id, { id: "job-parent-link" }, el("code", { textContent: job.parent_job_id })),
  );
}

// A pipeline's steps in order, each with its state, its progress while it runs, and its
// outputs once done; a step's row is rebuilt only when something of it changes.
function renderSteps(job) {
  const list = $("job-steps");
  const steps = (job.pipeline && job.pipeline.steps) || [];
  list.hidden = !steps.length;
  const rows = steps.map((step) => {
    const progress = job.progress && job.progress.message ? job.progress.message : "";
    const running = !TERMINAL.has(step.state) && step.state !== "JOB_STATE_QUEUED";
    // The pipeline's progress is its running step's, as "<step>: <message>".
    const said = running && progress.startsWith(`${step.name}: `) ? progress.slice(step.name.length + 2) : "";
    const key = JSON.stringify([step, said]);
    const known = list.querySelector(`li[data-step="${CSS.escape(step.name)}"]`);
    if (known && known.dataset.key === key) return known;
    const state = stateName(step.state);
    const row = el("li", { dataset: { step: step.name, state: step.state, key } },
      el("span", { className: `state ${state}`, textContent: state.replace("_", " ") }),
      step.job_id
        ? jobLink(step.job_id, { className: "step-name", title: `open the job of step ${step.name}` }, step.name)
        : el("span", { className: "step-name", textContent: step.name }),
      el("span", { className: "muted", textContent: `${taskName(step.task || "")}${said ? ` · ${said}` : ""}` }));
    if (step.output_text) row.append(el("p", { className: "step-text", textContent: step.output_text }));
    for (const asset of step.assets || []) {
      if ((asset.media_type || "").startsWith("text/") && step.output_text) continue;
      const link = el("a", { href: contentUrl(asset), target: "_blank", rel: "noopener" });
      if ((asset.media_type || "").startsWith("image/")) {
        link.append(el("img", { className: "step-thumb", src: contentUrl(asset), alt: `${step.name}: ${asset.filename || "image"}` }));
      } else {
        link.textContent = `${asset.filename || asset.media_type} (${formatBytes(asset.size_bytes)})`;
      }
      row.append(link);
    }
    if (step.error && step.error.message) row.append(el("p", { className: "error", textContent: step.error.message }));
    return row;
  });
  list.replaceChildren(...rows);
}

function renderResult(job) {
  const box = $("result");
  box.dataset.jobId = job.id;
  const parts = [el("h3", { textContent: "Result" })];
  if (job.output_text) parts.push(el("pre", { className: "output-text", id: "result-text", textContent: job.output_text }));
  (job.assets || []).forEach((asset, i) => {
    const isText = (asset.media_type || "").startsWith("text/");
    if (!(isText && job.output_text)) {
      const media = mediaFor(asset, i === 0 ? "result-media" : "");
      if (media) parts.push(media);
    }
    parts.push(assetMeta(asset));
  });
  box.replaceChildren(...parts);
  box.hidden = false;
  $("preview").hidden = true; // the final result replaces the preview
}

function tickElapsed() {
  const job = page.watch && page.watch.job;
  if (!job || !job.create_time) return;
  const end = TERMINAL.has(job.state) && job.update_time ? Date.parse(job.update_time) : Date.now();
  const seconds = Math.max(0, (end - Date.parse(job.create_time)) / 1000);
  $("job-elapsed").textContent = `${seconds.toFixed(1)} s`;
}

async function cancelJob() {
  const watch = page.watch;
  if (!watch) return;
  try {
    await api(`/v1/jobs/${encodeURIComponent(watch.id)}:cancel`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ reason: "cancelled from the web page" }),
    });
  } catch (error) {
    $("job-error").textContent = error.message;
  }
}

// ---- history and the live feed ---------------------------------------------------------------

function matchesFilters(job) {
  const state = $("filter-state").value;
  const task = $("filter-task").value;
  // As the listing (top_level_only) judges: a pipeline has no task of its own, so it is not
  // among the jobs of one, and a row's state is its own job's.
  return (!state || stateName(job.state) === state) && (!task || (job.spec && job.spec.task) === task);
}

// Keep the newest copy of a job and its history row; `where` places a new row.
function remember(job, where = "") {
  const known = page.jobs.get(job.id);
  const newest = known && seq(known.last_sequence) > seq(job.last_sequence) ? known : job;
  page.jobs.set(job.id, newest);
  renderRow(newest, where);
}

// An empty list says so once it has loaded, rather than leaving a blank card.
function noteEmpty() {
  const note = $("history-empty");
  const empty = page.listed && !$("history-list").children.length;
  const filtered = $("filter-state").value || $("filter-task").value;
  note.textContent = empty ? (filtered ? "No jobs match these filters." : "No jobs yet.") : "";
  note.hidden = !empty;
}

function renderRow(job, where) {
  // A pipeline's step shows in its pipeline's row (rowSteps), never as a row of its own. One
  // that comes before its pipeline (fetched first) is kept in page.jobs and brings its
  // pipeline in: first when the feed brought it, else by its age.
  if (job.parent_job_id) {
    const pipeline = page.jobs.get(job.parent_job_id);
    if (pipeline) renderRow(pipeline, where);
    else if (where) fetchJob(job.parent_job_id, where);
    return;
  }
  const list = $("history-list");
  let row = list.querySelector(`li[data-job-id="${CSS.escape(job.id)}"]`);
  if (!matchesFilters(job)) {
    if (row) row.remove();
    noteEmpty();
    return;
  }
  if (!row) {
    if (!where) return; // not on the page: nothing to update
    // A button to keyboards and screen readers too: Tab reaches it, Enter or Space opens it.
    row = el("li", { tabIndex: 0, dataset: { jobId: job.id } });
    row.setAttribute("role", "button");
    const open = () => {
      showJob(job.id);
      reveal();
    };
    row.addEventListener("click", open);
    row.addEventListener("keydown", (event) => {
      // A key on a step's link in the row is the link's: it opens the step.
      if (event.target !== row) return;
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      open();
    });
    place(row, job, where);
    noteEmpty();
  }
  const state = stateName(job.state);
  const spec = job.spec || {};
  row.classList.toggle("selected", Boolean(page.watch && page.watch.id === job.id));
  row.dataset.state = job.state;
  row.replaceChildren(
    el("span", { className: `state ${state}`, textContent: state.replace("_", " ") }),
    el("span", { className: "what", textContent: spec.prompt || jobKind(spec) }),
    whenMade(job),
    // A pipeline has no provider (its steps do): no "…" waiting for one.
    el("span", { className: "sub", textContent: [jobKind(spec), job.provider || (spec.pipeline ? "" : "…"), job.id].filter(Boolean).join(" · ") }),
    ...rowSteps(job),
  );
}

// "top" puts a new row first (a job just made); "bottom" puts it where its age does among
// the rows there, newest first as the listing pages them, so that a pipeline fetched for its
// step (older than the step) does not land among the next page's jobs.
function place(row, job, where) {
  const list = $("history-list");
  if (where === "top") {
    list.prepend(row);
    return;
  }
  const made = Date.parse(job.create_time);
  const older = [...list.children].find((other) => {
    const shown = page.jobs.get(other.dataset.jobId);
    return shown && Date.parse(shown.create_time) < made;
  });
  list.insertBefore(row, older || null);
}

// A pipeline's steps in its row, in order, each with its state as the pipeline records it
// (the same record as the job card's steps); a step that has a job opens it.
function rowSteps(job) {
  const steps = (job.pipeline && job.pipeline.steps) || [];
  if (!steps.length) return [];
  return [el("span", { className: "row-steps" }, ...steps.map((step) => {
    const state = stateName(step.state);
    const parts = [
      el("span", { className: "step-name", textContent: step.name }),
      el("span", { className: `state ${state}`, textContent: state.replace("_", " ") }),
    ];
    const dataset = { step: step.name, state: step.state };
    if (!step.job_id) return el("span", { className: "row-step", dataset }, ...parts);
    const shown = Boolean(page.watch && page.watch.id === step.job_id);
    return jobLink(step.job_id, {
      className: `row-step${shown ? " selected" : ""}`,
      title: `open the job of step ${step.name}`,
      dataset: { ...dataset, jobId: step.job_id },
    }, ...parts);
  }))];
}

// A link that opens job `id` in the job card, as a history row does; as a link, it opens in
// a new tab too. Inside a history row, its click is its own, not the row's.
function jobLink(id, props, ...children) {
  const link = el("a", { href: `#job=${encodeURIComponent(id)}`, ...props }, ...children);
  link.addEventListener("click", (event) => {
    event.stopPropagation();
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    showJob(id);
    reveal();
  });
  return link;
}

// When a job was made, in local time and short: today's by the time, older ones by the date
// (with the year when it is not this one); the full date and time on hover.
function whenMade(job) {
  if (!job.create_time) return el("span", { className: "when" });
  const at = new Date(job.create_time);
  return el("time", { className: "when", dateTime: job.create_time, title: at.toLocaleString(), textContent: whenText(at) });
}

function whenText(at) {
  const now = new Date();
  if (at.toDateString() === now.toDateString()) {
    return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  const year = at.getFullYear() === now.getFullYear() ? {} : { year: "numeric" };
  return at.toLocaleDateString([], { month: "short", day: "numeric", ...year });
}

// The page stays open for days: once the day turns, yesterday's times become dates (and at
// the new year, last year's dates gain their year). Checked on the clock's tick rather than
// at a timer set for midnight, which a sleeping machine or a changed clock would throw off.
function redateRows() {
  const today = new Date().toDateString();
  if (today === page.today) return;
  page.today = today;
  for (const time of document.querySelectorAll("#history-list time.when")) {
    time.textContent = whenText(new Date(time.dateTime));
  }
}

async function loadHistory(reset) {
  const params = new URLSearchParams({ page_size: PAGE_SIZE });
  if ($("filter-state").value) params.append("state", $("filter-state").value);
  if ($("filter-task").value) params.set("task", $("filter-task").value);
  // Pipelines and jobs of their own only, filtered or not, so that a page is PAGE_SIZE rows
  // and a reload shows what the live feed did (matchesFilters): a step's job shows in its
  // pipeline's row. Step jobs listed by task brought their pipelines in judged by a step's
  // state, and left out a pipeline whose step of the task had not started.
  params.set("top_level_only", "true");
  if (!reset && page.nextPage) params.set("page_token", page.nextPage);
  try {
    const body = await api(`/v1/jobs?${params}`);
    if (reset) $("history-list").replaceChildren();
    for (const job of body.jobs) remember(job, "bottom");
    page.nextPage = body.next_page_token;
    $("history-more").hidden = !page.nextPage;
    page.listed = true;
  } catch (error) {
    $("history-list").replaceChildren(el("li", { className: "error", textContent: error.message }));
  }
  noteEmpty();
}

// Every event of every job of this tenant over one WebSocket; resumes from its last cursor.
class Feed {
  constructor() {
    this.cursor = "";
    this.delay = 500;
    this.loaded = false;
    this.connect();
  }

  connect() {
    const query = this.cursor ? `?cursor=${encodeURIComponent(this.cursor)}` : "";
    const socket = new WebSocket(wsUrl(`/v1/jobs:watch${query}`));
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = () => {
      status("down", "live feed: reconnecting");
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }

  receive(message) {
    if (message.cursor) {
      this.cursor = message.cursor;
      this.delay = 500;
      status("live", "live feed: connected");
      if (!this.loaded) {
        // Listing after the feed is live: nothing can happen in between unseen.
        this.loaded = true;
        loadHistory(true);
      }
    } else if (message.event) {
      onFeedEvent(message.event);
    }
  }
}

function onFeedEvent(event) {
  const job = page.jobs.get(event.job_id);
  const waiting = page.fetching.get(event.job_id);
  if (job) applyFeedEvent(job, event);
  else if (waiting) waiting.push(event); // newer than the copy being fetched, maybe
  else fetchJob(event.job_id, "top"); // a job this page has not seen (another tab, the CLI)
}

function applyFeedEvent(job, event) {
  if (seq(event.sequence) <= seq(job.last_sequence)) return; // already have it
  applyEvent(job, event);
  renderRow(job, "top");
}

// Fetch a job whole, once at a time, then apply the feed's events that came meanwhile: the
// copy may have been read before them (a quick job's last event would be lost otherwise).
function fetchJob(id, where) {
  if (page.fetching.has(id)) return;
  const waiting = [];
  page.fetching.set(id, waiting);
  api(`/v1/jobs/${encodeURIComponent(id)}`)
    .then(
      (fetched) => {
        remember(fetched, where);
        for (const event of waiting) applyFeedEvent(page.jobs.get(id), event);
      },
      () => {}, // gone, or the gateway out of reach: the job's next event tries again
    )
    .finally(() => page.fetching.delete(id));
}

function status(kind, text) {
  const dot = $("feed-status");
  dot.className = `dot ${kind}`;
  dot.textContent = kind === "live" ? "live" : "offline";
  dot.title = text;
}

// ---- start -----------------------------------------------------------------------------------

function start() {
  $("task").addEventListener("change", fillProviders);
  // An error about the last submit says nothing about the task or the file chosen now.
  for (const input of [$("task"), $("input-file")]) {
    input.addEventListener("change", () => { $("submit-error").textContent = ""; });
  }
  $("provider").addEventListener("change", renderForm);
  $("submit-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", cancelJob);
  $("filter-state").addEventListener("change", () => loadHistory(true));
  $("filter-task").addEventListener("change", () => loadHistory(true));
  $("history-more").addEventListener("click", () => loadHistory(false));
  window.addEventListener("hashchange", () => jobInAddress() && showJob(jobInAddress()));
  if (jobInAddress()) showJob(jobInAddress());
  loadProviders();
  setInterval(loadProviders, 10000);
  setInterval(() => {
    tickElapsed();
    redateRows();
  }, 1000);
  new Feed();
}

start();
