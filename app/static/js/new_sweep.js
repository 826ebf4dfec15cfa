/* The sweep form: a base job, the parameters to vary (values for a grid, ranges for a random
   search), how trials are judged; posted to /api/sweeps as JSON. */
"use strict";

(() => {
  const data = tl.pageData();
  const el = tl.el;
  const $ = (id) => document.getElementById(id);
  const form = $("sweep-form");
  const rows = document.querySelector("#params tbody");
  const KINDS = { log_uniform: "log-uniform", uniform: "uniform", int_uniform: "integer", choice: "choice" };

  const strategy = () => form.querySelector('input[name="strategy"]:checked').value;

  for (const name of data.models) $("base-model").append(el("option", { value: name, text: name }));
  for (const d of data.datasets) {
    $("dataset").append(el("option", { value: d.id, text: `${d.name} (${d.rows} rows)` }));
    $("validation-dataset").append(el("option", { value: d.id, text: d.name }));
  }

  /** "1e-4, 3e-4" or "cosine, linear" -> [0.0001, 0.0003] or ["cosine", "linear"]. */
  function parseValues(text) {
    return text.split(",").map((part) => part.trim()).filter(Boolean).map((part) => {
      if (part === "true" || part === "false") return part === "true";
      const number = Number(part);
      return Number.isFinite(number) ? number : part;
    });
  }

  function addRow(name = "learning_rate", values = "1e-4, 3e-4, 1e-3") {
    const select = el("select", { class: "param-name" });
    for (const field of data.tunable) select.append(el("option", { value: field, text: field }));
    select.value = name;
    const kind = el("select", { class: "param-kind random-only", hidden: strategy() !== "random" });
    for (const [value, text] of Object.entries(KINDS)) kind.append(el("option", { value, text }));
    const input = el("input", { type: "text", class: "param-values", value: values, placeholder: "comma-separated values" });
    const range = el("span", { class: "param-range random-only", hidden: strategy() !== "random" },
      el("input", { type: "number", step: "any", class: "param-low", placeholder: "low" }),
      el("input", { type: "number", step: "any", class: "param-high", placeholder: "high" }));
    const remove = el("button", { type: "button", class: "link", text: "Remove", onclick: () => { row.remove(); update(); } });
    const row = el("tr", {}, el("td", {}, select), el("td", {}, kind, input, range), el("td", {}, remove));
    kind.addEventListener("change", update);
    rows.append(row);
    update();
  }

  function parameters() {
    const out = {};
    for (const row of rows.children) {
      const name = row.querySelector(".param-name").value;
      const values = parseValues(row.querySelector(".param-values").value);
      if (strategy() === "grid") out[name] = values;
      else {
        const kind = row.querySelector(".param-kind").value;
        out[name] = kind === "choice"
          ? { kind, values }
          : { kind, low: Number(row.querySelector(".param-low").value), high: Number(row.querySelector(".param-high").value) };
      }
    }
    return out;
  }

  function update() {
    const random = strategy() === "random";
    for (const node of form.querySelectorAll(".random-only")) node.hidden = !random;
    for (const row of rows.children) {
      const choice = !random || row.querySelector(".param-kind").value === "choice";
      row.querySelector(".param-values").hidden = !choice;
      row.querySelector(".param-range").hidden = choice;
    }
    const count = random ? Number($("trials").value) : Object.values(parameters()).reduce((n, v) => n * v.length, 1);
    $("trial-count").textContent = rows.children.length ? `${count} trial${count === 1 ? "" : "s"}` : "Add a parameter to vary.";
  }

  function body() {
    let spec = {};
    const text = $("base-spec").value.trim();
    if (text) spec = JSON.parse(text); // a SyntaxError is shown beside the field
    const base = { spec: { ...spec, base_model: $("base-model").value }, dataset_id: Number($("dataset").value), queue: $("queue").value };
    if ($("validation-dataset").value) base.validation_dataset_id = Number($("validation-dataset").value);
    const space = { strategy: strategy(), parameters: parameters() };
    if (space.strategy === "random") Object.assign(space, { trials: Number($("trials").value), seed: Number($("seed").value) });
    const out = { base, space, direction: $("direction").value, max_concurrent: Number($("max-concurrent").value), prune: $("prune").checked };
    if (form.elements.name.value.trim()) out.name = form.elements.name.value.trim();
    if ($("metric").value) out.metric = $("metric").value;
    return out;
  }

  function showErrors(errors) {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    const general = [];
    for (const error of errors) {
      const loc = (error.loc || []).filter((part) => part !== "body");
      let node = null;
      for (let n = loc.length; n > 0 && !node; n--) node = form.querySelector(`[data-error-for="${loc.slice(0, n).join(".")}"]`);
      if (node) node.textContent = error.msg;
      else general.push(loc.length ? `${loc.join(".")}: ${error.msg}` : error.msg);
    }
    $("form-error").textContent = general.join(" ");
    $("form-error").hidden = !general.length;
  }

  form.addEventListener("change", update);
  form.addEventListener("input", update);
  $("add-param").addEventListener("click", () => addRow(data.tunable.find((f) => !Object.keys(parameters()).includes(f)), ""));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = body();
    } catch (error) {
      showErrors([{ loc: ["base", "spec"], msg: `not valid JSON: ${error.message}` }]);
      return;
    }
    const button = $("launch");
    button.disabled = true;
    const response = await tl.api("POST", "/api/sweeps", payload);
    if (response.ok) {
      location.href = `/sweeps/${response.data.id}`;
      return;
    }
    button.disabled = false;
    if (response.status === 422 && Array.isArray(response.data.detail)) showErrors(response.data.detail);
    else showErrors([{ loc: [], msg: tl.errorText(response.data) }]);
  });

  const clone = data.clone;
  const { base_model: model, ...others } = clone ? clone.spec : { method: "lora", max_steps: 200, eval_split: 0.1 };
  if (model && data.models.includes(model)) $("base-model").value = model;
  $("base-spec").value = JSON.stringify(others, null, 2);
  if (clone) {
    if (clone.dataset_id) $("dataset").value = clone.dataset_id;
    if (clone.validation_dataset_id) $("validation-dataset").value = clone.validation_dataset_id;
    $("queue").value = clone.queue;
  }
  addRow();
  addRow("lora.r", "8, 16");
})();
