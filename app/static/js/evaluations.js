/* A job page's evaluations on other datasets: the list, and the form that asks a worker for
   one (a succeeded job only). Polls while one is queued or running. */
"use strict";

const jobEvaluations = (() => {
  const { el, fmt } = tl;
  const card = document.getElementById("evaluations-card");
  const list = document.getElementById("evaluations");
  const form = document.getElementById("evaluate-form");
  const choice = document.getElementById("evaluate-dataset");
  let jobId = null;
  let poll = null;

  function metricText(metrics) {
    const shown = Object.entries(metrics).filter(([key]) => key.startsWith("eval_") && !/runtime|per_second|preparation/.test(key));
    return shown.map(([key, value]) => `${key.slice(5).replaceAll("_", " ")} ${fmt.loss(value)}`).join(" · ");
  }

  function render(rows) {
    list.replaceChildren(...(rows.length ? rows.map((row) => el("li", { "data-state": row.state },
      el("strong", { text: row.dataset_name ?? "(deleted dataset)" }), " ", tl.badge(row.state), " ",
      el("span", { class: row.state === "failed" ? "error" : "", text: row.state === "succeeded" ? metricText(row.metrics) : row.error ?? "" }),
      el("span", { class: "muted", text: ` ${fmt.ago(row.created_at)}` })))
      : [el("li", { class: "muted", text: "None yet" })]));
    const busy = rows.some((row) => ["queued", "running"].includes(row.state));
    if (busy && !poll) poll = setInterval(refresh, 1500);
    if (!busy && poll) { clearInterval(poll); poll = null; }
  }

  async function refresh() {
    const response = await tl.api("GET", `/api/jobs/${jobId}/evaluations`);
    if (response.ok) render(response.data);
  }

  async function datasets() {
    const response = await tl.api("GET", "/api/datasets");
    if (!response.ok) return;
    choice.replaceChildren(...response.data.map((d) => el("option", { value: d.id, text: `${d.name} (${fmt.number(d.row_count)} rows)` })));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    const response = await tl.api("POST", `/api/jobs/${jobId}/evaluations`, { dataset_id: Number(choice.value) });
    button.disabled = false;
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    refresh();
  });

  /** Show the job's evaluations (null: read them again); the form only for a succeeded job the caller may change. */
  function show(job, rows, canWrite) {
    jobId = job.id;
    card.hidden = job.state !== "succeeded" && !(rows && rows.length);
    form.hidden = !(job.state === "succeeded" && canWrite);
    if (!form.hidden && !choice.options.length) datasets();
    if (rows) render(rows);
    else refresh();
  }
  return { show };
})();
