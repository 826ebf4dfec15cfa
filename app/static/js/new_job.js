/* The new-job form. Its fields are built from the training spec's JSON schema, so every
   range, choice, default and help text is the one the server validates against. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  const schema = data.schema;
  const form = document.getElementById("job-form");

  /** The schema of a dotted field path ("lora.r"), refs and nullable unions resolved. */
  function fieldSchema(path) {
    let node = schema;
    for (const part of path.split(".")) {
      node = node.properties[part];
      if (node.$ref) node = { ...schema.$defs[node.$ref.split("/").pop()], ...node };
      if (node.allOf) node = { ...schema.$defs[node.allOf[0].$ref.split("/").pop()], ...node };
    }
    const nullable = (node.anyOf || []).some((option) => option.type === "null");
    const base = (node.anyOf || []).find((option) => option.type !== "null") || node;
    return { ...base, ...node, nullable, base };
  }

  const LABELS = {
    lr_scheduler: "LR scheduler", max_seq_length: "Max sequence length", "lora.r": "Rank (r)", "lora.use_dora": "DoRA",
    "quantization.quant_type": "4-bit type", "quantization.compute_dtype": "Compute dtype",
    "quantization.double_quant": "Double quantization", train_on_prompt: "Train on prompts too",
    max_grad_norm: "Max gradient norm", early_stopping_patience: "Early stopping patience",
    gradient_accumulation_steps: "Gradient accumulation", keep_checkpoints: "Checkpoints kept",
    "preference.beta": "Beta", "preference.loss_type": "DPO loss", "preference.rpo_alpha": "RPO alpha",
    "preference.reference_free": "Reference-free",
    load_best_model_at_end: "Keep the best checkpoint", metric_for_best_model: "Best by", learning_check_at: "Check learning at (share of run)",
    eval_samples: "Sample answers", eval_sample_max_new_tokens: "Sample answer tokens",
    "num_devices": "Devices (per node)", "num_nodes": "Nodes (workers)", "fsdp.auto_wrap": "FSDP wrap", "fsdp.cpu_offload": "FSDP CPU offload",
    "fsdp.activation_checkpointing": "FSDP activation checkpointing",
  };
  const label = (path) => {
    if (LABELS[path]) return LABELS[path];
    const name = path.split(".").pop().replace(/_/g, " ");
    return name.charAt(0).toUpperCase() + name.slice(1);
  };

  function input(path) {
    const field = fieldSchema(path);
    const name = `spec.${path}`;
    const help = el("small", { class: "help", text: field.description || "" });
    const error = el("span", { class: "field-error", "data-error-for": name });
    if (path === "lora.target_modules") {
      return el("label", { title: field.description }, label(path),
        el("input", { type: "text", name, value: "all-linear", "data-kind": "modules" }), help, error);
    }
    if (field.base.type === "boolean" || field.type === "boolean") {
      return el("label", { class: "check-field", title: field.description },
        el("span", { class: "check" }, el("input", { type: "checkbox", name, checked: field.default === true, "data-kind": "boolean" }), label(path)),
        help, error);
    }
    if (field.enum || field.base.enum) {
      const options = field.enum || field.base.enum;
      return el("label", { title: field.description }, label(path),
        el("select", { name, "data-kind": "string" }, options.map((o) => el("option", { value: o, selected: o === field.default, text: o }))), help, error);
    }
    const type = field.base.type || field.type;
    const numeric = type === "integer" || type === "number";
    const attrs = { type: numeric ? "number" : "text", name, "data-kind": type, "data-nullable": field.nullable ? "1" : null };
    if (numeric) {
      attrs.step = type === "integer" ? "1" : "any";
      const min = field.base.minimum ?? field.base.exclusiveMinimum;
      if (min !== undefined) attrs.min = min;
      if (field.base.maximum !== undefined) attrs.max = field.base.maximum;
    }
    if (field.default !== null && field.default !== undefined) attrs.value = field.default;
    else attrs.placeholder = path === "learning_rate" ? "auto" : "default";
    return el("label", { title: field.description }, label(path), el("input", attrs), help, error);
  }

  for (const container of form.querySelectorAll("[data-fields]")) {
    for (const path of container.dataset.fields.split(" ")) container.append(input(path));
  }

  // Models and datasets.
  const modelSelect = document.getElementById("base-model");
  for (const model of data.models) {
    modelSelect.append(el("option", { value: model.name, text: `${model.name} · ${fmt.compact(model.parameters)} params` }));
  }
  document.getElementById("no-models").hidden = data.models.length > 0;
  const datasetSelect = document.getElementById("dataset");
  const validationSelect = document.getElementById("validation-dataset");
  for (const dataset of data.datasets) {
    const text = `${dataset.name} · ${dataset.format.replace("_", "/")} · ${fmt.number(dataset.rows)} rows`;
    datasetSelect.append(el("option", { value: dataset.id, text }));
    validationSelect.append(el("option", { value: dataset.id, text }));
  }
  document.getElementById("no-datasets").hidden = data.datasets.length > 0;

  // Which datasets fit the objective: supervised data for SFT, pairs for DPO and ORPO, pairs or
  // feedback for KTO. A dataset that does not fit stays listed, marked and not selectable.
  const objective = () => form.querySelector("[name='spec.objective']:checked").value;
  const fits = (dataset) => (data.objective_formats[objective()] || []).includes(dataset.format);
  function markDatasets() {
    for (const select of [datasetSelect, validationSelect]) {
      for (const option of select.options) {
        const dataset = data.datasets.find((d) => String(d.id) === option.value);
        if (!dataset) continue;
        option.disabled = !fits(dataset);
        option.textContent = `${dataset.name} · ${dataset.format.replace("_", "/")} · ${fmt.number(dataset.rows)} rows${fits(dataset) ? "" : " · not for " + objective().toUpperCase()}`;
      }
      if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
        const first = [...select.options].find((o) => !o.disabled && o.value);
        select.value = first ? first.value : (select === validationSelect ? "" : select.value);
      }
    }
    const fitting = data.datasets.filter(fits).length;
    const note = document.getElementById("objective-data-note");
    note.hidden = data.datasets.length === 0 || fitting > 0;
    note.textContent = objective() === "sft" ? "No supervised dataset yet: upload chat, instruction or text data."
      : `No dataset fits ${objective().toUpperCase()} yet: upload preference pairs (prompt, chosen, rejected)${objective() === "kto" ? " or answers labelled good or bad" : ""}.`;
  }

  function objectiveChanged() {
    const chosen = objective();
    const preference = chosen !== "sft";
    document.getElementById("preference-section").hidden = !preference;
    const show = (path, visible) => { form.querySelector(`[name="spec.${path}"]`).closest("label").hidden = !visible; };
    show("preference.loss_type", chosen === "dpo");
    show("preference.rpo_alpha", chosen === "dpo");
    show("preference.reference_free", chosen === "dpo");
    if (chosen !== "dpo") form.querySelector("[name='spec.preference.reference_free']").checked = false;
    show("preference.desirable_weight", chosen === "kto");
    show("preference.undesirable_weight", chosen === "kto");
    show("packing", !preference);  // pairs are batched by length, never packed
    show("train_on_prompt", !preference);
    if (preference) form.querySelector("[name='spec.train_on_prompt']").checked = false;
    markDatasets();
  }

  const selectedModel = () => data.models.find((m) => m.name === modelSelect.value);
  const classifying = () => data.datasets.some((d) => String(d.id) === datasetSelect.value && d.format === "classification");

  function describeModel() {
    const model = selectedModel();
    const template = classifying() ? "trained as a classifier (no chat template)"
      : model && model.chat_template ? "has a chat template" : "no chat template (ChatML is used)";
    document.getElementById("model-help").textContent = model
      ? `${model.architecture} · up to ${fmt.number(model.max_positions)} tokens · ${template}`
      : "";
  }

  // Defaults that depend on the model and the data: the max length is at most what the model
  // handles, and text+label data trains a classifier, which packs nothing (auto elsewhere). A field the user
  // has set (or a cloned job's) keeps its value.
  const setByUser = new Set();
  function applyDefaults() {
    const packing = form.querySelector("[name='spec.packing']");
    if (!setByUser.has(packing.name)) packing.value = classifying() ? "off" : fieldSchema("packing").default;
    const length = form.querySelector("[name='spec.max_seq_length']");
    const model = selectedModel();
    if (!setByUser.has(length.name)) {
      const fallback = fieldSchema("max_seq_length").default;
      length.value = model && model.max_positions ? Math.min(model.max_positions, fallback) : fallback;
    }
  }

  /** The JSON body the API takes, from the form's inputs. */
  function body() {
    const spec = {};
    const set = (path, value) => {
      const parts = path.split(".");
      let node = spec;
      for (const part of parts.slice(0, -1)) node = node[part] = node[part] || {};
      node[parts.at(-1)] = value;
    };
    for (const node of form.querySelectorAll("[name^='spec.']")) {
      const path = node.name.slice(5);
      if (node.type === "radio" && !node.checked) continue;
      const kind = node.dataset.kind;
      if (kind === "boolean") set(path, node.checked);
      else if (kind === "modules") {
        const text = node.value.trim();
        set(path, text === "all-linear" || !text ? "all-linear" : text.split(",").map((s) => s.trim()).filter(Boolean));
      } else if (kind === "integer" || kind === "number") {
        if (node.value.trim() !== "") set(path, Number(node.value));
      } else set(path, node.value);
    }
    const integrations = trackingIntegrations();
    if (integrations.length) spec.integrations = integrations;
    const result = { spec, dataset_id: Number(datasetSelect.value) || null };
    if (validationSelect.value) result.validation_dataset_id = Number(validationSelect.value);
    const name = form.elements.name.value.trim();
    if (name) result.name = name;
    result.queue = form.elements.queue.value.trim() || "default";
    if (data.team_id) result.team_id = data.team_id;
    if (data.parent) result.parent_job_id = data.parent.id;
    return result;
  }

  /* The "Experiment tracking" inputs (tracking.<kind>.<field>) as the spec's integrations, in
     OpenAI's shape: a tracker with any field filled in is asked for. */
  const TRACKERS = ["wandb", "mlflow"];
  function trackingIntegrations() {
    const integrations = [];
    for (const kind of TRACKERS) {
      const settings = {};
      for (const node of form.querySelectorAll(`[name^='tracking.${kind}.']`)) {
        const value = node.value.trim();
        if (!value) continue;
        const field = node.name.split(".").pop();
        settings[field] = field === "tags" ? value.split(",").map((tag) => tag.trim()).filter(Boolean) : value;
      }
      if (Object.keys(settings).length) integrations.push({ type: kind, [kind]: settings });
    }
    return integrations;
  }

  /** An error's place in the form: spec.integrations.N.<kind>.<field> is tracking.<kind>.<field>. */
  function errorPath(loc) {
    const path = (loc || []).slice(1);
    if (path[0] === "spec" && path[1] === "integrations" && path.length > 3) return ["tracking", ...path.slice(3)].join(".");
    return path.join(".");
  }

  function showErrors(detail) {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
    const unplaced = [];
    for (const error of detail) {
      const path = errorPath(error.loc);
      const slot = form.querySelector(`[data-error-for="${CSS.escape(path)}"]`);
      const field = form.querySelector(`[name="${CSS.escape(path)}"]`);
      if (slot) {
        slot.textContent = error.msg.replace(/^Value error, /, "");
        if (field) field.classList.add("invalid");
        const section = slot.closest("details");
        if (section) section.open = true;
      } else unplaced.push(`${path || "request"}: ${error.msg}`);
    }
    const box = document.getElementById("form-error");
    box.hidden = unplaced.length === 0;
    box.textContent = unplaced.join("; ");
    const first = form.querySelector(".invalid");
    if (first) first.focus();
  }

  function methodChanged() {
    const method = form.querySelector("[name='spec.method']:checked").value;
    document.getElementById("lora-section").hidden = method === "full";
    document.getElementById("qlora-section").hidden = method !== "qlora";
  }

  let estimateTimer = null;
  function scheduleEstimate() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(estimate, 250);
  }
  async function estimate() {
    const request = body();
    if (!request.spec.base_model) return;
    const response = await tl.api("POST", "/api/jobs/estimate", { spec: request.spec, dataset_id: request.dataset_id });
    const total = document.getElementById("estimate-total");
    if (!response.ok) {
      total.textContent = "–";
      document.getElementById("estimate-parts").replaceChildren();
      document.getElementById("estimate-fits").replaceChildren(el("li", { class: "muted", text: tl.errorText(response.data) }));
      return;
    }
    const result = response.data;
    total.textContent = `≈ ${result.total_gib.toFixed(1)} GiB`;
    document.getElementById("estimate-parts").replaceChildren(...result.parts.map((part) =>
      el("tr", {}, el("td", { text: part.name }), el("td", { class: "num", text: `${part.gib.toFixed(2)} GiB` }))));
    document.getElementById("estimate-fits").replaceChildren(...result.fits.map((fit) =>
      el("li", { class: fit.fits ? "fits-yes" : "fits-no", text: `${fit.fits ? "✓ fits" : "✗ too big for"} ${fit.gpu}` })),
      result.gpus_from === "workers" ? null : el("li", { class: "muted small", text: "No live worker reports a GPU: compared with common sizes." }));
  }

  function prefill(clone) {
    const walk = (prefix, object) => {
      for (const [key, value] of Object.entries(object)) {
        const path = prefix ? `${prefix}.${key}` : key;
        if (value && typeof value === "object" && !Array.isArray(value)) { walk(path, value); continue; }
        const nodes = form.querySelectorAll(`[name="spec.${CSS.escape(path)}"]`);
        for (const node of nodes) {
          setByUser.add(node.name);
          if (node.type === "radio") node.checked = node.value === value;
          else if (node.type === "checkbox") node.checked = !!value;
          else if (typeof value === "boolean" && node.tagName === "SELECT") node.value = value ? "on" : "off"; // packing before auto
          else node.value = Array.isArray(value) ? value.join(", ") : value ?? "";
        }
      }
    };
    walk("", clone.spec);
    for (const integration of clone.spec.integrations || []) {
      for (const [field, value] of Object.entries(integration[integration.type] || {})) {
        const node = form.querySelector(`[name="tracking.${CSS.escape(integration.type)}.${CSS.escape(field)}"]`);
        if (node && value != null) node.value = Array.isArray(value) ? value.join(", ") : value;
      }
    }
    if (clone.dataset_id) datasetSelect.value = clone.dataset_id;
    if (clone.validation_dataset_id) validationSelect.value = clone.validation_dataset_id;
    form.elements.queue.value = clone.queue;
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "spec.method") methodChanged();
    if (event.target.name === "spec.objective") objectiveChanged();
    if (event.target.name === "spec.base_model" || event.target.name === "dataset_id") {
      applyDefaults();
      describeModel();
    } else if (event.target.name && event.target.name.startsWith("spec.")) setByUser.add(event.target.name);
    scheduleEstimate();
  });
  form.addEventListener("input", (event) => {
    if (event.target.name && event.target.name.startsWith("spec.") && event.target.name !== "spec.base_model") setByUser.add(event.target.name);
    scheduleEstimate();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("launch");
    button.disabled = true;
    button.textContent = "Launching…";
    const response = await tl.api("POST", "/api/jobs", body());
    if (response.ok) {
      location.href = `/jobs/${response.data.id}`;
      return;
    }
    button.disabled = false;
    button.textContent = "Launch job";
    if (response.status === 422 && Array.isArray(response.data.detail)) showErrors(response.data.detail);
    else showErrors([{ loc: [], msg: tl.errorText(response.data) }]);
  });

  if (data.clone) prefill(data.clone);
  if (data.parent) {
    // Continuing a job: same base model, method and adapter; more steps or epochs, or new data.
    const note = document.getElementById("continue-note");
    const weights = data.parent.method === "full" ? "weights" : "adapter";
    note.replaceChildren("Continues ", el("a", { href: `/jobs/${data.parent.id}`, text: `#${data.parent.id} ${data.parent.name}` }),
      `: training starts from its ${weights} and keeps training it. Choose more epochs or steps, another dataset, or DPO on preference pairs (SFT, then DPO).`);
    note.hidden = false;
    document.querySelector("h1").textContent = `Continue training #${data.parent.id}`;
  }
  const wanted = new URLSearchParams(location.search).get("dataset");
  if (wanted && data.datasets.some((d) => String(d.id) === wanted)) datasetSelect.value = wanted;
  // Preference data asked for (or the first dataset) picks an objective that trains on it.
  const initial = data.datasets.find((d) => String(d.id) === datasetSelect.value);
  if (initial && !data.clone && !fits(initial)) {
    const fitting = ["dpo", "kto"].find((o) => data.objective_formats[o].includes(initial.format));
    if (fitting) form.querySelector(`[name='spec.objective'][value='${fitting}']`).checked = true;
  }
  methodChanged();
  objectiveChanged();
  applyDefaults();
  describeModel();
  estimate();
})();
