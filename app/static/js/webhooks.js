/* Settings: the current team's webhooks (owners): add, send a test event, disable, rotate the
   secret (shown once), delete, and each webhook's delivery log. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  const team = data.teams.find((t) => t.id === data.current_team_id);
  if (!team || !(team.role === "owner" || data.is_admin)) return;
  const EVENTS = [
    ["fine_tuning.job.succeeded", "succeeded"], ["fine_tuning.job.failed", "failed"],
    ["fine_tuning.job.cancelled", "cancelled"], ["fine_tuning.job.running", "running"],
    ["fine_tuning.job.checkpoint", "checkpoint saved"], ["fine_tuning.job.eval", "eval results"],
  ];
  const STATE_CLASS = { delivered: "succeeded", failed: "failed", pending: "queued" };
  const base = `/api/teams/${team.id}/webhooks`;
  const section = document.getElementById("webhooks");
  section.hidden = false;
  document.getElementById("webhook-team").textContent = `team ${team.name}`;
  document.getElementById("webhook-events").replaceChildren(...EVENTS.map(([type, label], i) =>
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "event", value: type, checked: i < 3 }), ` ${label}`)));
  let shown = null; // the webhook whose delivery log is open
  let refresh = null;

  function showSecret(secret) {
    document.getElementById("webhook-secret-value").textContent = secret;
    document.getElementById("webhook-secret").hidden = false;
  }
  document.getElementById("webhook-secret-done").addEventListener("click", () => {
    document.getElementById("webhook-secret").hidden = true;
    document.getElementById("webhook-secret-value").textContent = "";
  });
  document.getElementById("copy-webhook-secret").addEventListener("click", async () => {
    await navigator.clipboard.writeText(document.getElementById("webhook-secret-value").textContent);
    tl.toast("Secret copied");
  });

  document.getElementById("webhook-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = {
      url: form.elements.url.value.trim(), description: form.elements.description.value.trim(),
      event_types: [...form.querySelectorAll("input[name=event]:checked")].map((box) => box.value),
    };
    const response = await tl.api("POST", base, body);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    showSecret(response.data.secret);
    form.elements.url.value = form.elements.description.value = "";
    load();
  });

  function button(text, handler, cls = "") {
    const b = el("button", { type: "button", class: cls, text });
    b.addEventListener("click", handler);
    return b;
  }

  async function act(method, url, body, done) {
    const response = await tl.api(method, url, body);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    if (done) done(response.data);
    load();
  }

  async function load() {
    const response = await tl.api("GET", base);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    const rows = response.data.map((hook) => el("tr", { class: hook.enabled ? "" : "muted", "data-webhook": hook.id },
      el("td", {}, el("code", { text: hook.url }), hook.description ? el("div", { class: "muted", text: hook.description }) : null),
      el("td", { text: hook.event_types.map((t) => t.replace("fine_tuning.job.", "")).join(", ") }),
      el("td", {}, el("span", { class: `state state-${hook.enabled ? "succeeded" : "cancelled"}`, text: hook.enabled ? "enabled" : "disabled" })),
      el("td", { class: "actions" },
        button("Send test event", () => act("POST", `${base}/${hook.id}/test`, null, () => { tl.toast("Test event sent"); openLog(hook); }), "primary"),
        button("Delivery log", () => openLog(hook)),
        button(hook.enabled ? "Disable" : "Enable", () => act("PATCH", `${base}/${hook.id}`, { enabled: !hook.enabled })),
        button("Rotate secret", () => {
          if (confirm("Make a new signing secret? Receivers must use it from now on: the old one signs nothing more.")) {
            act("POST", `${base}/${hook.id}/secret`, null, (data) => showSecret(data.secret));
          }
        }),
        button("Delete", () => {
          if (!confirm(`Delete the webhook to ${hook.url}, with its delivery log?`)) return;
          if (shown && shown.id === hook.id) closeLog();
          act("DELETE", `${base}/${hook.id}`);
        }, "danger"))));
    document.getElementById("webhook-rows").replaceChildren(...rows);
    section.querySelector(".webhook-list").hidden = rows.length === 0;
    if (shown) loadLog();
  }

  function openLog(hook) {
    shown = hook;
    document.getElementById("deliveries-of").textContent = `to ${hook.url}`;
    document.getElementById("deliveries").hidden = false;
    loadLog();
  }

  function closeLog() {
    shown = null;
    document.getElementById("deliveries").hidden = true;
  }

  async function loadLog() {
    clearTimeout(refresh);
    if (!shown) return;
    const response = await tl.api("GET", `${base}/${shown.id}/deliveries`);
    if (!response.ok) return closeLog();
    const rows = response.data.map((delivery) => {
      // Every try, oldest first: its answer and how long it took; the last error there was.
      const tries = delivery.attempts.map((a) => `${a.status_code ? a.status_code : "no answer"} (${a.duration_ms} ms)`);
      const failed = delivery.attempts.filter((a) => a.error);
      return el("tr", { "data-delivery": delivery.id },
        el("td", { text: fmt.time(delivery.created_at) }), el("td", {}, el("code", { text: delivery.event_type })),
        el("td", {}, el("span", { class: `state state-${STATE_CLASS[delivery.state]}`, text: delivery.state })),
        el("td", { text: delivery.attempts.length }),
        el("td", { class: "tries", text: tries.length ? tries.join(" → ") : "waiting for a worker" }),
        el("td", { class: "muted", text: failed.length ? failed[failed.length - 1].error : "" }));
    });
    document.getElementById("delivery-rows").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No deliveries yet." }))]));
    // While a delivery is under way, look again soon.
    if (response.data.some((delivery) => delivery.state === "pending")) refresh = setTimeout(loadLog, 2000);
  }
  document.getElementById("deliveries-refresh").addEventListener("click", loadLog);

  load();
})();
