/* Several jobs' loss curves on one chart. */
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

  const picker = document.getElementById("job-picker");
  for (const job of data.jobs) {
    const box = el("input", { type: "checkbox", value: job.id, checked: chosen.has(job.id) });
    box.addEventListener("change", async () => {
      if (box.checked) { chosen.add(job.id); await load(job.id); } else chosen.delete(job.id);
      draw();
    });
    picker.append(el("li", {}, el("label", { class: "check" }, box,
      el("span", { class: "swatch", style: `background:${colour(job.id)}` }),
      el("span", {}, `#${job.id} ${job.name} `, tl.badge(job.state)))));
  }
  logScale.addEventListener("change", draw);
  smoothing.addEventListener("input", draw);
  Promise.all([...chosen].map(load)).then(draw);
})();
