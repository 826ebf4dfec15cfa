/* The Workers page: every worker with its devices and job, the queues; refreshed from /api/workers. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const REFRESH_MS = 5000;

  function memory(device) {
    if (device.memory_total_bytes === null || device.memory_total_bytes === undefined) return null;
    const used = device.memory_used_bytes ?? 0;
    const fraction = device.memory_total_bytes ? used / device.memory_total_bytes : 0;
    return el("div", { class: "device-memory" },
      el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction * 100) },
        el("div", { class: "progress-fill", style: `width: ${(fraction * 100).toFixed(1)}%` })),
      el("small", { class: "muted", text: `${fmt.bytes(used)} / ${fmt.bytes(device.memory_total_bytes)}${device.kind === "cpu" ? " RAM" : ""}` }));
  }

  function deviceItem(device) {
    const title = device.kind === "gpu"
      ? `GPU ${device.index}: ${device.name}`
      : `CPU: ${device.name}${device.cores ? ` (${device.cores} cores)` : ""}`
        + (device.processes > 1 ? ` · ${device.processes} training processes` : "");
    const utilization = device.utilization_percent !== null && device.utilization_percent !== undefined
      ? el("small", { class: "muted", text: ` · ${device.utilization_percent}% busy` }) : null;
    return el("li", { class: `device device-${device.kind}` }, el("span", { text: title }), utilization, memory(device));
  }

  function jobCell(worker) {
    if (!worker.busy) return el("span", { class: "muted", text: worker.stale ? "–" : "idle" });
    const since = worker.busy_since ? el("small", { class: "muted", text: ` since ${fmt.ago(worker.busy_since)}` }) : null;
    if (worker.job) return el("span", {}, el("a", { href: `/jobs/${worker.job.id}`, text: worker.job.name }), since);
    return el("span", {}, el("span", { text: "busy" }), since);
  }

  function workerRow(worker) {
    return el("tr", { class: worker.stale ? "stale" : "" },
      el("td", {}, el("div", { class: "mono", text: worker.name }),
        el("small", { class: "muted", text: `${worker.hostname} · pid ${worker.pid} · up since ${fmt.time(worker.started_at)}` })),
      el("td", { text: worker.queues.join(", ") }),
      el("td", {}, el("ul", { class: "plain devices" }, worker.devices.map(deviceItem))),
      el("td", {}, jobCell(worker)),
      el("td", {}, el("span", { text: fmt.ago(worker.last_seen_at) }), " ",
        worker.stale ? el("span", { class: "state state-failed", title: "No heartbeat for a while: the worker may be down", text: "stale" }) : null));
  }

  function queueRow(queue) {
    return el("tr", {},
      el("td", { class: "mono", text: queue.name }),
      el("td", { text: queue.waiting === null ? "unknown" : fmt.number(queue.waiting) }),
      el("td", {}, queue.workers
        ? el("span", { text: String(queue.workers) })
        : el("span", { class: "warning-text", text: `none: start one with tunelab worker --queues ${queue.name}` })));
  }

  function render(data) {
    const live = data.workers.filter((w) => !w.stale).length;
    const stale = data.workers.length - live;
    const gpus = data.gpus.total ? `${data.gpus.free} of ${data.gpus.total} GPUs free, ${data.gpus.busy} busy` : "no GPU";
    document.getElementById("worker-counts").textContent =
      `${live} live worker${live === 1 ? "" : "s"}${stale ? `, ${stale} stale` : ""} · ${gpus}`;
    document.getElementById("workers-body").replaceChildren(...data.workers.map(workerRow));
    document.getElementById("workers-empty").hidden = data.workers.length > 0;
    document.getElementById("queues-body").replaceChildren(...data.queues.map(queueRow));
  }

  render(tl.pageData());
  setInterval(async () => {
    const response = await tl.api("GET", "/api/workers");
    if (response.ok) render(response.data);
  }, REFRESH_MS);
})();
