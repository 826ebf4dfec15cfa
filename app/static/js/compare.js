/* Several jobs' loss curves on one chart, and beside them a table of where each job ended and
   the settings they differ in (GET /api/compare), the shared settings folded away. */
"use strict";

(() => {
  const { el } = tl;
  const data = tl.pageData();
  const chosen = new Set(data.chosen);
  const metrics = new Map();
  const chart = charts.line(document.getElementById("compare-chart"), { height: 380 });
  const logScale = document.getElementById("log-scale");
  const smoothing = document.getElementById("smoothing");
  const colour = (jobId) => charts.palette[data.jobs.findIndex((j) => j.id === jobId) % charts.palette.length];

  async function load(jobId) {
    if (metrics.has(jobId)) return;
    const response = await tl.api("GET", `/api/jobs/${jobId}/metrics`);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    const train = [], evals = [];
    for (const point of response.data) {
      if (point.split === "train" && point.values.loss !== undefined) train.push([point.step, point.values.loss]);
      if (point.split === "eval" && point.values.eval_loss !== undefined) evals.push([point.step, point.values.eval_loss]);
    }
    metrics.set(jobId, { train, evals });
  }

  function draw() {
    const weight = Number(smoothing.value);
    document.getElementById("smoothing-value").textContent = weight.toFixed(2);
    const series = [];
    for (const job of data.jobs.filter((j) => chosen.has(j.id) && metrics.has(j.id))) {
      const { train, evals } = metrics.get(job.id);
      const smoothed = tl.smooth(train.map((p) => p[1]), weight);
      series.push({ label: `#${job.id} train`, points: train.map((p, i) => [p[0], smoothed[i]]), color: colour(job.id) });
      if (evals.length) series.push({ label: `#${job.id} eval`, points: evals, color: colour(job.id), dash: [6, 4], showPoints: true });
    }
    document.getElementById("compare-empty").hidden = series.length > 0;
    if (series.length) chart.draw(series, { log: logScale.checked });
    history.replaceState(null, "", chosen.size ? `?jobs=${[...chosen].join(",")}` : location.pathname);
  }

  // ---- the table: final metrics, differing settings, equal settings (folded) ----
  const tableCard = document.getElementById("compare-table-card");
  const table = document.getElementById("compare-table");
  const percent = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
  const METRICS = {
    state: ["State", (x) => tl.badge(x)],
    train_loss: ["Train loss (last)", tl.fmt.loss],
    eval_loss: ["Eval loss (last)", tl.fmt.loss],
    train_accuracy: ["Train accuracy (last)", percent],
    eval_accuracy: ["Eval accuracy (last)", percent],
    steps: ["Steps", tl.fmt.number],
    trained_tokens: ["Tokens trained", tl.fmt.number],
    duration_s: ["Duration", tl.fmt.duration],
    eval_f1_macro: ["Eval macro F1 (last)", (x) => (x === null || x === undefined ? "–" : x.toFixed(3))],
    best_eval_loss: ["Best eval loss", tl.fmt.loss],
    best_eval_loss_step: ["… at step", setting],
    best_eval_accuracy: ["Best eval accuracy", percent],
    best_eval_accuracy_step: ["… at step", setting],
    best_eval_f1_macro: ["Best eval macro F1", (x) => (x === null || x === undefined ? "–" : x.toFixed(3))],
    best_eval_f1_macro_step: ["… at step", setting],
  };
  function setting(value) {
    if (value === null || value === undefined) return "–";
    if (Array.isArray(value)) return value.join(", ");
    if (typeof value === "boolean") return value ? "yes" : "no";
    return String(value);
  }
  /** Indexes of the best values of a metric row (lowest loss, highest accuracy), when they differ. */
  function best(row) {
    const numbers = row.values.filter((v) => typeof v === "number");
    if (!row.better || numbers.length < 2 || new Set(numbers).size < 2) return new Set();
    const target = row.better === "lower" ? Math.min(...numbers) : Math.max(...numbers);
    return new Set(row.values.flatMap((v, i) => (v === target ? [i] : [])));
  }
  const group = (title, jobs, ...extra) =>
    el("tr", { class: "group" }, el("th", { colspan: jobs.length + 1 }, title, ...extra));
  function renderTable(body) {
    const head = el("thead", {}, el("tr", {}, el("th", { text: "" }),
      body.jobs.map((job) => el("th", { class: "job-head" },
        el("span", { class: "swatch", style: `background:${colour(job.id)}` }), `#${job.id} ${job.name}`))));
    const metrics = el("tbody", { "data-testid": "compare-metrics" }, group("Final and best metrics", body.jobs),
      body.metrics.map((row) => {
        const [label, format] = METRICS[row.name] || [row.name, setting];
        const winners = best(row);
        return el("tr", { "data-metric": row.name }, el("td", { text: label }),
          row.values.map((v, i) => el("td", { class: winners.has(i) ? "best" : null }, format(v))));
      }));
    const settingRow = (row) => el("tr", { "data-setting": row.name }, el("td", { class: "name", text: row.name }),
      row.values.map((v) => el("td", { text: setting(v) })));
    const differing = el("tbody", { "data-testid": "compare-differing" },
      group(`${body.differing.length} settings differ`, body.jobs),
      body.differing.map(settingRow));
    const equalRows = el("tbody", { "data-testid": "compare-equal", hidden: true }, body.equal.map(settingRow));
    const several = body.jobs.length > 1;
    const equalLabel = `${body.equal.length} settings${several ? " equal" : ""}`;
    const toggle = el("button", { type: "button", id: "toggle-equal", "aria-expanded": "false", text: `Show ${equalLabel}` });
    toggle.addEventListener("click", () => {
      equalRows.hidden = !equalRows.hidden;
      toggle.setAttribute("aria-expanded", String(!equalRows.hidden));
      toggle.textContent = `${equalRows.hidden ? "Show" : "Hide"} ${equalLabel}`;
    });
    const equalHead = el("tbody", {}, group("", body.jobs, toggle));
    table.replaceChildren(head, metrics, several ? differing : el("tbody"), equalHead, equalRows);
  }
  let asked = 0;
  async function loadTable() {
    const ids = data.jobs.filter((j) => chosen.has(j.id)).map((j) => j.id);
    const ticket = ++asked;
    compareSamples.load(ids);
    if (!ids.length) { tableCard.hidden = true; return; }
    const response = await tl.api("GET", `/api/compare?${ids.map((id) => `jobs=${id}`).join("&")}`);
    if (ticket !== asked) return; // a later choice is on its way
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    renderTable(response.data);
    tableCard.hidden = false;
  }

  const picker = document.getElementById("job-picker");
  for (const job of data.jobs) {
    const box = el("input", { type: "checkbox", value: job.id, checked: chosen.has(job.id) });
    box.addEventListener("change", async () => {
      if (box.checked) chosen.add(job.id); else chosen.delete(job.id);
      loadTable();
      if (box.checked) await load(job.id);
      draw();
    });
    picker.append(el("li", {}, el("label", { class: "check" }, box,
      el("span", { class: "swatch", style: `background:${colour(job.id)}` }),
      el("span", {}, `#${job.id} ${job.name} `, tl.badge(job.state)))));
  }
  logScale.addEventListener("change", draw);
  smoothing.addEventListener("input", draw);
  Promise.all([...chosen].map(load)).then(draw);
  loadTable();
})();
