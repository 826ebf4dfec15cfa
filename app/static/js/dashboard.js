/* The team dashboard: the job list, kept live by the team stream (/api/stream). */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  const jobs = new Map(data.jobs.map((job) => [job.id, job]));
  const losses = new Map(Object.entries(data.losses).map(([id, points]) => [Number(id), points]));
  const selected = new Set();
  const body = document.getElementById("jobs-body");
  const stateFilter = document.getElementById("filter-state");
  const personFilter = document.getElementById("filter-person");
  const params = new URLSearchParams(location.search);

  for (const person of data.people) personFilter.append(el("option", { value: person, text: person }));
  stateFilter.value = params.get("state") || "";
  personFilter.value = params.get("person") || "";

  function visible(job) {
    const state = stateFilter.value;
    if (state === "active" && !["queued", "running", "cancelling", "pausing", "paused"].includes(job.state)) return false;
    if (state && state !== "active" && job.state !== state) return false;
    if (personFilter.value && job.created_by !== personFilter.value) return false;
    return true;
  }

  function row(job) {
    const canvas = el("canvas", { class: "sparkline", width: 120, height: 28, "aria-hidden": "true" });
    const box = el("input", { type: "checkbox", "aria-label": `Select job ${job.id}`, checked: selected.has(job.id) });
    box.addEventListener("change", () => {
      box.checked ? selected.add(job.id) : selected.delete(job.id);
      document.getElementById("compare-selected").disabled = selected.size < 2;
    });
    const tr = el("tr", { "data-job": job.id, class: `job-row state-row-${job.state}` },
      el("td", { class: "select" }, box),
      el("td", {}, tl.badge(job.state)),
      el("td", { class: "job-name" },
        el("a", { href: `/jobs/${job.id}`, text: job.name }),
        el("small", { class: "muted block", text: `#${job.id}${job.error ? " · " + job.error.slice(0, 80) : ""}` })),
      el("td", {}, el("span", { text: job.created_by || "–" }), el("small", { class: "muted block", text: fmt.ago(job.created_at) })),
      el("td", {}, el("span", { text: job.base_model }), el("small", { class: "muted block", text: job.method.toUpperCase() })),
      el("td", { class: "progress-col" }, tl.progressBar(job)),
      el("td", { class: "num", text: fmt.loss(job.train_loss) }),
      el("td", { class: "num", text: fmt.loss(job.eval_loss) }),
      el("td", {}, canvas));
    return [tr, canvas];
  }

  function render() {
    body.replaceChildren();
    const shown = [...jobs.values()].filter(visible).sort((a, b) => b.id - a.id);
    for (const job of shown) {
      const [tr, canvas] = row(job);
      body.append(tr);
      tl.sparkline(canvas, (losses.get(job.id) || []).map((p) => p[1]));
    }
    document.getElementById("jobs-empty").hidden = jobs.size > 0;
    const count = (s) => [...jobs.values()].filter((j) => j.state === s).length;
    document.getElementById("job-counts").textContent =
      `${jobs.size} ${jobs.size === 1 ? "job" : "jobs"} · ${count("running")} running · ${count("queued")} queued`;
  }

  function update(job) {
    const previous = jobs.get(job.id);
    jobs.set(job.id, job);
    if (job.train_loss !== null && (!previous || job.step > (previous.step || 0))) {
      let series = losses.get(job.id) || [];
      series.push([job.step, job.train_loss]);
      // Keep the shape of the whole run in a bounded number of points: thin out, never cut.
      if (series.length > 120) series = series.filter((_, i) => i % 2 === 0 || i === series.length - 1);
      losses.set(job.id, series);
    }
    render();
  }

  function saveFilters() {
    const query = new URLSearchParams();
    if (stateFilter.value) query.set("state", stateFilter.value);
    if (personFilter.value) query.set("person", personFilter.value);
    history.replaceState(null, "", query.toString() ? `?${query}` : location.pathname);
    render();
  }
  stateFilter.addEventListener("change", saveFilters);
  personFilter.addEventListener("change", saveFilters);
  document.getElementById("compare-selected").addEventListener("click", () => {
    location.href = `/compare?jobs=${[...selected].join(",")}`;
  });

  const live = document.getElementById("live");
  const stream = new EventSource(tl.teamUrl("/api/stream"));
  stream.addEventListener("open", () => live.classList.add("on"));
  stream.addEventListener("error", () => live.classList.remove("on"));
  stream.addEventListener("snapshot", (event) => {
    for (const job of JSON.parse(event.data)) jobs.set(job.id, job);
    render();
  });
  stream.addEventListener("job", (event) => update(JSON.parse(event.data)));
  render();
  // Relative times ("2 min ago") and ETAs age even when nothing changes.
  setInterval(render, 30000);
})();
