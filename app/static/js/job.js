/* One job, live: charts, progress, events, downloads. The page arrives with every point
   stored so far (a finished job is complete on first paint); running jobs then follow the
   job's SSE stream from the last sequence number the page has. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  let job = data.job;
  const train = [], evals = [], lr = [], tps = [];
  // A preference job's (DPO, ORPO, KTO) series, train and eval: reward_chosen, eval_reward_margin, ...
  const preference = {};
  const PREFERENCE_KEYS = ["reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"];
  // Task metrics at each evaluation (step 0: the base model), and what the chart calls them.
  const EVAL_METRICS = { eval_accuracy: "accuracy", eval_f1_macro: "macro F1", eval_mean_token_accuracy: "token accuracy" };
  const evalMetrics = {};
  const bestMetric = (data.spec_used && data.spec_used.metric_for_best_model) || "eval_loss";
  let shownEvaluation = null; // the classifier evaluation the confusion matrix shows
  // A tagger's, question answerer's or seq2seq job's evaluation metrics (eval_f1, eval_f1_PER, eval_exact_match,
  // eval_rougeL, ...), each a series, charted together (fractions from 0 to 1).
  const taskMetrics = {};
  const TASK_METRIC = /^eval_(precision|recall|f1|exact_match|rouge)(?!_macro$)/; // a classifier's macro F1 has its own chart
  // What the chart shows, by the first of these metrics the job logs (QA logs f1 too: its note comes first).
  const TASK_NOTES = { exact_match: "SQuAD exact match and F1", rouge1: "ROUGE F-measures", f1: "entity-level (seqeval), overall and per type" };
  // A job on several devices: where its ranks run (the start event's `placement`), each rank's
  // tokens/s series and latest peak memory (MB), and the busiest device's. None for one device.
  let placement = null, placementSeq = -1;
  const rankTps = [], rankMemory = [];
  let busiestMemory = null;
  const RANK_METRIC = /^(tokens_per_second|peak_memory_mb)_rank(\d+)$/;
  const seenMetric = new Set();
  const seenEvent = new Set();

  const lossChart = charts.line(document.getElementById("loss-chart"), { height: 300 });
  const lrChart = charts.line(document.getElementById("lr-chart"), { height: 190 });
  const tpsChart = charts.line(document.getElementById("tps-chart"), { height: 190 });
  const rewardChart = charts.line(document.getElementById("reward-chart"), { height: 190 });
  const rewardAccuracyChart = charts.line(document.getElementById("reward-accuracy-chart"), { height: 190 });
  const logpChart = charts.line(document.getElementById("logp-chart"), { height: 190 });
  const evalMetricsChart = charts.line(document.getElementById("eval-metrics-chart"), { height: 220 });
  const taskChart = charts.line(document.getElementById("task-chart"), { height: 220 });
  const rankTpsChart = charts.line(document.getElementById("rank-tps-chart"), { height: 190 });
  const logScale = document.getElementById("log-scale");
  const smoothing = document.getElementById("smoothing");

  function addMetric(point) {
    if (seenMetric.has(point.seq)) return;
    seenMetric.add(point.seq);
    const v = point.values;
    for (const key of PREFERENCE_KEYS) {
      const name = point.split === "eval" ? `eval_${key}` : key;
      if (v[name] !== undefined) (preference[name] = preference[name] || []).push([point.step, v[name]]);
    }
    if (point.split === "eval") {
      if (v.eval_loss !== undefined) evals.push([point.step, v.eval_loss]);
      for (const key of Object.keys(EVAL_METRICS))
        if (v[key] !== undefined && v[key] !== null) (evalMetrics[key] = evalMetrics[key] || []).push([point.step, v[key]]);
      for (const [name, value] of Object.entries(v)) {
        if (TASK_METRIC.test(name)) (taskMetrics[name] = taskMetrics[name] || []).push([point.step, value]);
      }
      return;
    }
    if (v.loss !== undefined) train.push([point.step, v.loss]);
    if (v.learning_rate !== undefined) lr.push([point.step, v.learning_rate]);
    if (v.tokens_per_second !== undefined) tps.push([point.step, v.tokens_per_second]);
    const latest = (old) => !old || point.step >= old[0];
    for (const [name, value] of Object.entries(v)) {
      const match = RANK_METRIC.exec(name);
      if (!match) continue;
      const rank = Number(match[2]);
      if (match[1] === "tokens_per_second") (rankTps[rank] = rankTps[rank] || []).push([point.step, value]);
      else if (latest(rankMemory[rank])) rankMemory[rank] = [point.step, value];
    }
    if (v.peak_memory_mb_busiest !== undefined && latest(busiestMemory)) busiestMemory = [point.step, v.peak_memory_mb_busiest];
  }

  let drawPending = false;
  function drawCharts() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      const weight = Number(smoothing.value);
      document.getElementById("smoothing-value").textContent = weight.toFixed(2);
      const sorted = (points) => points.slice().sort((a, b) => a[0] - b[0]);
      const trainSorted = sorted(train);
      const smoothed = tl.smooth(trainSorted.map((p) => p[1]), weight);
      const series = [];
      if (weight > 0) series.push({ label: "train (raw)", points: trainSorted, color: charts.palette[0], faint: true });
      series.push({ label: weight > 0 ? "train (smoothed)" : "train", points: trainSorted.map((p, i) => [p[0], smoothed[i]]), color: charts.palette[0] });
      series.push({ label: "eval", points: sorted(evals), color: charts.palette[1], showPoints: true });
      const bestLoss = bestMetric === "eval_loss" && best(evals, false);
      if (bestLoss) series.push(bestMarker(bestLoss));
      document.getElementById("loss-empty").hidden = train.length + evals.length > 0;
      document.getElementById("loss-chart").dataset.points = String(train.length + evals.length);
      lossChart.draw(series, { log: logScale.checked });
      drawEvalMetrics(sorted);
      lrChart.draw([{ label: "learning rate", points: sorted(lr), color: charts.palette[2] }]);
      tpsChart.draw([{ label: "tokens/s", points: sorted(tps), color: charts.palette[4] }]);
      const taskNames = Object.keys(taskMetrics).sort();
      document.getElementById("task-charts").hidden = !taskNames.length;
      if (taskNames.length) {
        const note = Object.keys(TASK_NOTES).find((key) => taskMetrics[`eval_${key}`]);
        document.getElementById("task-chart-note").textContent = note ? TASK_NOTES[note] : "";
        const chart = document.getElementById("task-chart");
        chart.dataset.series = taskNames.join(" ");
        taskChart.draw(taskNames.map((name, i) => ({ label: name.slice(5), points: sorted(taskMetrics[name]), color: charts.palette[i % charts.palette.length], showPoints: true })));
      }
      drawDevices(sorted);
      const shown = Object.keys(preference).length > 0;
      document.getElementById("preference-charts").hidden = !shown;
      if (shown) {
        const line = (name, label, color, showPoints = false) => ({ label, points: sorted(preference[name] || []), color, showPoints });
        rewardChart.draw([
          line("reward_chosen", "chosen", charts.palette[0]),
          line("reward_rejected", "rejected", charts.palette[1]),
          line("reward_margin", "margin", charts.palette[2]),
          line("eval_reward_margin", "eval margin", charts.palette[3], true),
        ]);
        rewardAccuracyChart.draw([
          line("reward_accuracy", "train", charts.palette[0]),
          line("eval_reward_accuracy", "eval", charts.palette[1], true),
        ]);
        logpChart.draw([
          line("logp_chosen", "chosen", charts.palette[0]),
          line("logp_rejected", "rejected", charts.palette[1]),
        ]);
      }
    });
  }
  /** Where a job on several devices runs, and how each rank does: its tokens/s over the steps, its
      latest figures in a table, and the busiest device's peak memory. Hidden for one device. */
  function drawDevices(sorted) {
    const ranks = Math.max(rankTps.length, rankMemory.length, placement ? placement.devices.length : 0);
    const card = document.getElementById("devices-card");
    card.hidden = ranks < 2;
    if (card.hidden) return;
    const how = placement ? (placement.parallelism === "fsdp" ? "FSDP (sharded)" : "DDP") : "";
    // A multi-node job's placement lists its nodes (each host and its devices), by node rank.
    const nodes = placement && placement.nodes && placement.nodes.length > 1 ? placement.nodes : null;
    const where = nodes
      ? `${nodes.length} nodes (${nodes.map((node) => `${node.hostname}: ${node.devices.length}`).join(", ")})`
      : placement ? placement.hostname : "";
    document.getElementById("devices-line").textContent =
      placement ? `${placement.world_size} ranks on ${where} · ${how}` : `${ranks} ranks`;
    const memories = rankMemory.map((m) => (m ? m[1] : -1));
    const busiest = memories.length ? memories.indexOf(Math.max(...memories)) : -1;
    const last = (points) => (points && points.length ? sorted(points)[points.length - 1][1] : null);
    const rows = [];
    for (let rank = 0; rank < ranks; rank++) {
      const tokens = last(rankTps[rank]);
      rows.push(el("tr", { class: rank === busiest ? "busiest" : "", "data-rank": rank },
        el("td", { text: String(rank) }),
        el("td", { text: placement && placement.devices[rank] ? placement.devices[rank] : "–" }),
        el("td", { text: tokens === null ? "–" : fmt.number(Math.round(tokens)) }),
        el("td", { text: rankMemory[rank] ? fmt.bytes(rankMemory[rank][1] * 2 ** 20) : "–" })));
    }
    document.getElementById("per-rank").replaceChildren(
      el("thead", {}, el("tr", {}, ["rank", "device", "tokens/s", "peak memory"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows));
    document.getElementById("busiest-memory").textContent = busiestMemory
      ? `Busiest device: ${fmt.bytes(busiestMemory[1] * 2 ** 20)} peak${busiest >= 0 ? ` (rank ${busiest})` : ""}, at step ${busiestMemory[0]}`
      : "";
    const chart = document.getElementById("rank-tps-chart");
    chart.dataset.series = String(rankTps.filter(Boolean).length);
    rankTpsChart.draw(rankTps.map((points, rank) => ({ label: `rank ${rank} tokens/s`, points: sorted(points || []), color: charts.palette[rank % charts.palette.length] })));
  }

  /** The best evaluation after step 0 (the earliest of equals), as [step, value], or null. */
  function best(points, higher) {
    let found = null;
    for (const p of points.filter((q) => q[0] > 0).sort((a, b) => a[0] - b[0]))
      if (!found || (higher ? p[1] > found[1] : p[1] < found[1])) found = p;
    return found;
  }
  const bestMarker = (point) => ({ label: `best (step ${point[0]})`, points: [point], color: charts.palette[7], showPoints: true, pointSize: 11, width: 0 });

  function drawEvalMetrics(sorted) {
    const keys = Object.keys(EVAL_METRICS).filter((key) => evalMetrics[key]);
    document.getElementById("evaluation").hidden = keys.length === 0;
    if (!keys.length) return;
    const series = keys.map((key, i) => ({ label: EVAL_METRICS[key], points: sorted(evalMetrics[key]), color: charts.palette[[1, 3, 2][i]], showPoints: true }));
    const marked = evalMetrics[bestMetric] && best(evalMetrics[bestMetric], true);
    if (marked) series.push(bestMarker(marked));
    const chart = document.getElementById("eval-metrics-chart");
    chart.dataset.points = String(keys.reduce((n, key) => n + evalMetrics[key].length, 0));
    chart.dataset.baseline = String(keys.some((key) => evalMetrics[key].some((p) => p[0] === 0)));
    evalMetricsChart.draw(series);
  }

  /** A classifier's latest evaluation: the confusion matrix as a heat map (rows: true label), and per-class figures. */
  function renderEvaluation(evaluation) {
    if (shownEvaluation && shownEvaluation.step > evaluation.step) return;
    shownEvaluation = evaluation;
    const names = evaluation.class_names, matrix = evaluation.confusion_matrix;
    const largest = Math.max(1, ...matrix.flat());
    document.getElementById("confusion-card").hidden = false;
    document.getElementById("confusion-step").textContent = evaluation.step === 0 ? "the base model (step 0)" : `at step ${evaluation.step}`;
    document.getElementById("confusion-matrix").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { class: "axis", text: "true ↓ predicted →" }), names.map((n) => el("th", { text: n })))),
      el("tbody", {}, matrix.map((row, i) => el("tr", {}, el("th", { text: names[i] }), row.map((count, j) => {
        const share = count / largest;
        const tint = i === j ? "5, 150, 105" : "220, 38, 38"; // right on the diagonal, wrong elsewhere
        return el("td", { text: String(count), title: `${count} ${names[i]} rows predicted ${names[j]}`,
          style: `background: rgba(${tint}, ${(0.08 + 0.72 * share).toFixed(2)}); color: ${share > 0.6 ? "#fff" : "inherit"}` });
      })))));
    const percent = (x) => `${(x * 100).toFixed(1)}%`;
    document.getElementById("per-class").replaceChildren(
      el("thead", {}, el("tr", {}, ["label", "precision", "recall", "F1", "rows"].map((h) => el("th", { text: h })))),
      el("tbody", {}, evaluation.per_class.map((c) => el("tr", {}, el("td", { text: c.label }), el("td", { text: percent(c.precision) }),
        el("td", { text: percent(c.recall) }), el("td", { text: c.f1.toFixed(3) }), el("td", { text: String(c.support) })))));
  }

  function showVerdict(data) {
    document.getElementById("job-verdict").hidden = false;
    document.getElementById("job-verdict-reasons").textContent = `At step ${data.step}: ${data.reasons.join("; ")}.`;
    document.getElementById("job-verdict-causes").replaceChildren(...data.causes.map((c) => el("li", { text: `Likely: ${c}` })));
  }

  logScale.addEventListener("change", drawCharts);
  smoothing.addEventListener("input", drawCharts);

  function addEvent(event) {
    if (seenEvent.has(event.seq)) return;
    seenEvent.add(event.seq);
    // Newest first, in sequence order: what happens now is on top, and the first events stay
    // where they are at the end of the list instead of being scrolled away.
    const list = document.getElementById("events");
    const item = el("li", { class: `level-${event.level}`, "data-seq": event.seq },
      el("time", { datetime: event.created_at, text: new Date(event.created_at).toLocaleTimeString() }),
      el("span", { text: event.message }));
    const older = [...list.children].find((li) => Number(li.dataset.seq) < event.seq);
    list.insertBefore(item, older || null);
    if (event.data && event.data.evaluation) renderEvaluation(event.data.evaluation);
    if (event.data && event.data.verdict === "not_learning") showVerdict(event.data);
    if (event.data && event.data.placement && event.seq > placementSeq) {
      placement = event.data.placement; // the latest start: a resumed job may have started again
      placementSeq = event.seq;
      drawCharts();
    }
    if (/^Saved checkpoint|^Saved the|^Job (succeeded|cancelled|paused)/.test(event.message)) refreshArtifacts();
  }

  function renderJob() {
    document.getElementById("job-state").replaceChildren(tl.badge(job.state));
    document.getElementById("job-meta").textContent =
      ` ${job.base_model} · ${job.method.toUpperCase()}${job.spec && job.spec.objective && job.spec.objective !== "sft" ? " " + job.spec.objective.toUpperCase() : ""} · launched by ${job.created_by || "–"} ${fmt.ago(job.created_at)}`;
    const bar = document.getElementById("job-progress");
    bar.className = `progress large state-${job.state}`;
    const fraction = job.progress ?? (job.state === "succeeded" ? 1 : 0);
    bar.firstElementChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    const facts = [
      ["Step", job.total_steps ? `${fmt.number(job.step)} / ${fmt.number(job.total_steps)}` : "–"],
      ["Time left", job.state === "running" ? fmt.duration(job.eta_seconds) : "–"],
      ["Epoch", job.epoch !== null ? job.epoch.toFixed(2) : "–"],
      ["Train loss", fmt.loss(job.train_loss)],
      ["Eval loss", fmt.loss(job.eval_loss)],
      ["Trained tokens", fmt.compact(job.trained_tokens)],
      ["Dataset", data.dataset ? data.dataset.name : "(deleted)"],
      ["Attempts", String(job.attempts)],
    ];
    document.getElementById("job-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    const error = document.getElementById("job-error");
    error.hidden = !job.error;
    error.textContent = job.error || "";
    const can = (states) => data.can_write && states.includes(job.state);
    document.getElementById("cancel-job").hidden = !can(["queued", "running", "pausing", "paused"]);
    document.getElementById("pause-job").hidden = !can(["queued", "running"]);
    document.getElementById("resume-job").hidden = !can(["cancelled", "failed", "paused"]);
    document.getElementById("continue-job").hidden = !can(["succeeded"]);
    // "No worker serves this queue" holds only while the job waits in it.
    const queueWarning = document.getElementById("job-queue-warning");
    if (queueWarning) queueWarning.hidden = job.state !== "queued";
  }

  function renderDownloads(artifacts) {
    const downloads = document.getElementById("downloads");
    const finalWeights = artifacts.find((a) => a.kind === "adapter" || a.kind === "model");
    const checkpoints = artifacts.filter((a) => a.kind === "checkpoint");
    const items = [];
    if (finalWeights || (["cancelled", "failed", "paused"].includes(job.state) && checkpoints.length)) {
      const label = finalWeights && finalWeights.kind === "model" ? "Model weights (.zip)" : "Adapter (.zip, PEFT format)";
      items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/adapter.zip`), download: "", text: label }),
        el("span", { class: "muted", text: finalWeights ? fmt.bytes(finalWeights.size_bytes) : "from the last checkpoint" })));
    }
    const merged = artifacts.find((a) => a.kind === "merged");
    if (merged) items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/artifacts/${merged.id}/archive`), download: "", text: "Merged model (.zip)" }),
      el("span", { class: "muted", text: fmt.bytes(merged.size_bytes) })));
    else if (data.can_write && job.method !== "full" && ["succeeded", "cancelled", "failed"].includes(job.state) && (finalWeights || checkpoints.length))
      items.push(el("li", {}, el("button", { type: "button", class: "link", text: "Build merged model", onclick: buildMerged }),
        el("span", { class: "muted", text: "base model + adapter, built by a worker" })));
    for (const gguf of artifacts.filter((a) => a.kind.startsWith("gguf-")))
      items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/artifacts/${gguf.id}/archive`), download: "", text: `GGUF ${gguf.kind.slice(5).toUpperCase()} + Ollama Modelfile (.zip)` }),
        el("span", { class: "muted", text: fmt.bytes(gguf.size_bytes) })));
    if (data.can_write && data.gguf_refusal && (finalWeights || checkpoints.length))
      items.push(el("li", { class: "gguf-export" }, el("span", { class: "muted", text: `No GGUF export: ${data.gguf_refusal}` })));
    else if (data.can_write && ["succeeded", "cancelled", "failed"].includes(job.state) && (finalWeights || checkpoints.length))
      items.push(el("li", { class: "gguf-export" },
        el("select", { id: "gguf-quantization", "aria-label": "GGUF quantisation" }, ...GGUF_TYPES.map(([value, label]) => el("option", { value, text: label }))),
        el("button", { type: "button", class: "link", text: "Export GGUF", onclick: exportGguf }),
        el("span", { class: "muted", text: "llama.cpp / Ollama, built by a worker" })));
    if (finalWeights) items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/model-card`), target: "_blank", text: "Model card" })));
    items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/metrics.csv`), download: "", text: "Metrics (.csv)" })));
    const tracking = artifacts.find((a) => a.kind === "tracking");
    if (tracking) items.push(el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/artifacts/${tracking.id}/archive`), download: "", text: "Tracking logs (.zip)", title: "TensorBoard event files, and the W&B run when it logged offline" }),
      el("span", { class: "muted", text: fmt.bytes(tracking.size_bytes) })));
    downloads.replaceChildren(...items);
    document.getElementById("checkpoints").replaceChildren(...(checkpoints.length ? checkpoints.map((c) =>
      el("li", {}, el("a", { href: tl.teamUrl(`/api/jobs/${job.id}/artifacts/${c.id}/archive`), download: "", text: `Step ${c.step}` }),
        el("span", { class: "muted", text: fmt.bytes(c.size_bytes) }))) : [el("li", { class: "muted", text: "None yet" })]));
  }

  /* The merge runs on a worker after the job's stream has ended: follow its events by polling
     until the worker says it is done (or failed). */
  async function buildMerged(event) {
    event.target.disabled = true;
    event.target.textContent = "Building the merged model…";
    const response = await tl.api("POST", `/api/jobs/${job.id}/merge`);
    if (!response.ok) {
      event.target.disabled = false;
      event.target.textContent = "Build merged model";
      return tl.toast(tl.errorText(response.data), "error");
    }
    if (response.status === 200) return refreshArtifacts();
    followWorkerTask("merge");
  }

  /** Poll the job's events until the worker task that writes `data[key]` says done or failed. */
  function followWorkerTask(key) {
    const poll = setInterval(async () => {
      const events = await tl.api("GET", `/api/jobs/${job.id}/events?after=${Math.max(0, ...seenEvent)}`);
      if (!events.ok) return;
      events.data.forEach(addEvent);
      if (events.data.some((e) => ["done", "failed"].includes(e.data[key]))) {
        clearInterval(poll);
        refreshArtifacts();
      }
    }, 1500);
  }

  const GGUF_TYPES = [["q8_0", "Q8_0 (8-bit)"], ["q4_0", "Q4_0 (4-bit, smallest)"], ["q5_0", "Q5_0 (5-bit)"], ["f16", "F16 (no loss)"], ["bf16", "BF16"]];

  /* The export runs on a worker (merging first when needed): follow its events by polling, as for the merge. */
  async function exportGguf(event) {
    const button = event.target;
    const quantization = document.getElementById("gguf-quantization").value;
    button.disabled = true;
    button.textContent = "Exporting…";
    const response = await tl.api("POST", `/api/jobs/${job.id}/exports/gguf`, { quantization });
    if (!response.ok) {
      button.disabled = false;
      button.textContent = "Export GGUF";
      return tl.toast(tl.errorText(response.data), "error");
    }
    if (response.status === 200) return refreshArtifacts();
    followWorkerTask("gguf");
  }

  async function refreshArtifacts() {
    const response = await tl.api("GET", `/api/jobs/${job.id}/artifacts`);
    if (response.ok) renderDownloads(response.data);
  }

  /** A button that POSTs a job action, then shows the job as the answer leaves it. */
  function action(id, path, question) {
    document.getElementById(id).addEventListener("click", async (event) => {
      if (question && !confirm(question)) return;
      event.target.disabled = true;
      const response = await tl.api("POST", `/api/jobs/${job.id}/${path}`);
      event.target.disabled = false;
      if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
      job = response.data;
      renderJob();
      follow(); // a resumed job streams again, continuing the same curve
    });
  }
  action("cancel-job", "cancel", "Cancel this job? Training stops at the next step; checkpoints are kept.");
  action("pause-job", "pause");
  action("resume-job", "resume");

  let stream = null;
  /** Follow the job's stream while it has not finished, from the last item the page has. */
  function follow() {
    if (stream || ["succeeded", "failed", "cancelled"].includes(job.state)) return;
    const after = Math.max(data.last_seq, ...seenMetric, ...seenEvent);
    // The browser resends the last event id by itself when it reconnects.
    stream = new EventSource(tl.teamUrl(`/api/jobs/${job.id}/stream?after=${after}`));
    stream.addEventListener("metric", (e) => { addMetric(JSON.parse(e.data)); drawCharts(); });
    stream.addEventListener("event", (e) => addEvent(JSON.parse(e.data)));
    stream.addEventListener("samples", (e) => jobSamples.add(JSON.parse(e.data)));
    stream.addEventListener("progress", (e) => { job = JSON.parse(e.data); renderJob(); });
    stream.addEventListener("end", () => { stream.close(); stream = null; refreshArtifacts(); jobEvaluations.show(job, null, data.can_write); });
  }

  data.metrics.forEach(addMetric);
  data.events.forEach(addEvent);
  data.samples.forEach(jobSamples.add);
  document.getElementById("spec").textContent = JSON.stringify(data.spec_used, null, 2);
  renderJob();
  renderDownloads(data.artifacts);
  jobEvaluations.show(job, data.evaluations, data.can_write);
  drawCharts();
  follow();
  setInterval(renderJob, 30000);
})();
