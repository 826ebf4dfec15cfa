/* tunelab: small helpers shared by every page. No framework, no build step. */
"use strict";

const tl = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  // The team this page works in. Its API calls carry it, so that a tab keeps working in its
  // team when another tab switches.
  const team = () => document.querySelector('meta[name="team-id"]')?.content || "";

  /** Headers every API call of the page sends: the CSRF token and the page's team. */
  function headers() {
    const result = { "X-CSRF-Token": csrf(), Accept: "application/json" };
    if (team()) result["X-Tunelab-Team"] = team();
    return result;
  }

  /** A URL of this site for a link or an EventSource (which cannot send headers), with the page's team. */
  function teamUrl(url) {
    if (!team()) return url;
    return `${url}${url.includes("?") ? "&" : "?"}team=${encodeURIComponent(team())}`;
  }

  /** fetch JSON with the session's CSRF token; resolves to {ok, status, data}. */
  async function api(method, url, body) {
    const options = { method, headers: headers(), credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    // A 204 has no body even where its headers say JSON (FastAPI keeps the route's content type).
    let data = null;
    const type = response.headers.get("content-type") || "";
    const text = response.status === 204 ? "" : await response.text();
    if (text && type.includes("application/json")) data = JSON.parse(text);
    else if (text) data = text;
    return { ok: response.ok, status: response.status, data };
  }

  /** The human message of an API error body ({detail: "..."} or FastAPI's list). */
  function errorText(data) {
    if (!data) return "Something went wrong.";
    if (typeof data === "string") return data;
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) return data.detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    if (data.error && data.error.message) return data.error.message;
    return JSON.stringify(data);
  }

  const pageData = (id = "page-data") => JSON.parse(document.getElementById(id).textContent);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP, unlike a style attribute
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = {
    loss: (x) => (x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(3) : x.toPrecision(3)),
    number: (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString()),
    compact: (x) => {
      if (x === null || x === undefined) return "–";
      for (const [unit, size] of [["B", 1e9], ["M", 1e6], ["K", 1e3]]) if (Math.abs(x) >= size) return (x / size).toFixed(1) + unit;
      return String(Math.round(x));
    },
    bytes: (n) => {
      if (n === null || n === undefined) return "–";
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
    },
    duration: (s) => {
      if (s === null || s === undefined || !isFinite(s)) return "–";
      s = Math.round(s);
      if (s < 60) return `${s}s`;
      if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
      return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    },
    ago: (iso) => {
      if (!iso) return "";
      const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
      if (seconds < 45) return "just now";
      if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
      if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
      return new Date(iso).toLocaleDateString();
    },
    time: (iso) => (iso ? new Date(iso).toLocaleString() : "–"),
  };

  function badge(state) {
    return el("span", { class: `state state-${state}`, text: state });
  }

  function progressBar(job) {
    const fraction = job.progress === null || job.progress === undefined ? (job.state === "succeeded" ? 1 : 0) : job.progress;
    const label = job.total_steps ? `${fmt.number(job.step)} / ${fmt.number(job.total_steps)}` : job.state === "queued" ? (job.warning ? "no live worker serves its queue" : "waiting for a worker") : "–";
    const eta = job.eta_seconds !== null && job.eta_seconds !== undefined ? ` · ${fmt.duration(job.eta_seconds)} left` : "";
    return el("div", { class: "progress-cell" },
      el("div", { class: `progress state-${job.state}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction * 100) },
        el("div", { class: "progress-fill", style: `width: ${(fraction * 100).toFixed(1)}%` })),
      el("small", { class: job.warning ? "warning-text" : "muted", title: job.warning || null, text: label + eta }));
  }

  /** A tiny line chart of the last values, drawn on a canvas. */
  function sparkline(canvas, values) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 120, height = canvas.clientHeight || 28;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const ys = values.filter((v) => v !== null && isFinite(v));
    if (ys.length < 2) return;
    const min = Math.min(...ys), max = Math.max(...ys), span = max - min || 1;
    ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--accent") || "#4f46e5";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ys.forEach((y, i) => {
      const px = (i / (ys.length - 1)) * (width - 2) + 1;
      const py = height - 2 - ((y - min) / span) * (height - 4);
      i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
    });
    ctx.stroke();
  }

  /** Exponential moving average with bias correction (as TensorBoard smooths). */
  function smooth(values, weight) {
    if (!weight) return values.slice();
    let last = 0, count = 0;
    return values.map((v) => {
      if (v === null || !isFinite(v)) return v;
      last = last * weight + (1 - weight) * v;
      count++;
      return last / (1 - Math.pow(weight, count));
    });
  }

  // Tagged words with their BIO entities marked (a "B-PER" and the "I-PER" after it make one
  // mark labelled PER); words with other tags are shown as they are.
  function taggedTokens(tokens, tags) {
    const parts = [];
    for (let i = 0; i < tokens.length;) {
      const bio = /^[BI]-(.+)$/.exec(tags[i] || "");
      if (!bio) { parts.push(`${tokens[i++]} `); continue; }
      let end = i + 1;
      while (end < tokens.length && tags[end] === `I-${bio[1]}`) end++;
      parts.push(el("mark", { class: "entity", "data-entity": bio[1], title: bio[1] }, tokens.slice(i, end).join(" "),
        el("small", { text: bio[1] })), " ");
      i = end;
    }
    return el("p", { class: "tagged" }, parts);
  }

  // `text` with the span {start, text} marked (an answer in its context), or plain without one.
  function markedSpan(text, span, title = "answer") {
    if (!span || span.start < 0) return el("span", { text });
    const end = span.start + span.text.length;
    return el("span", { class: "context" }, text.slice(0, span.start),
      el("mark", { class: "answer", title }, text.slice(span.start, end)), text.slice(end));
  }

  let toastTimer = null;
  function toast(message, kind = "info") {
    const node = document.getElementById("toast");
    node.textContent = message;
    node.className = `toast toast-${kind}`;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (node.hidden = true), 5000);
  }

  // Selects marked data-autosubmit submit their form on change (the team switcher).
  document.addEventListener("change", (event) => {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
  });

  return {
    api, errorText, pageData, el, fmt, badge, progressBar, sparkline, smooth, toast, csrf, team, headers, teamUrl,
    taggedTokens, markedSpan,
  };
})();
