/* Datasets: the list, and uploads by drag and drop or file picker with a progress bar. A
   refused file shows every error with its line number, right here. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  const datasets = data.datasets;

  function renderList() {
    document.getElementById("datasets-empty").hidden = datasets.length > 0;
    document.getElementById("datasets-body").replaceChildren(...datasets.map((d) =>
      el("tr", { "data-dataset": d.id },
        el("td", {}, el("a", { href: `/datasets/${d.id}`, text: d.name, class: "strong" }),
          d.name !== d.filename ? el("small", { class: "muted block", text: d.filename }) : null),
        el("td", { text: data.formats[d.format] || d.format }),
        el("td", { class: "num", text: fmt.number(d.row_count) }),
        el("td", { class: "num", text: fmt.bytes(d.size_bytes) }),
        el("td", { class: "num", text: fmt.compact(d.stats.estimated_tokens) }),
        el("td", {}, el("span", { text: fmt.ago(d.created_at) }), el("small", { class: "muted block", text: d.created_by || "" })),
        el("td", {}, el("a", { href: `/jobs/new?dataset=${d.id}`, text: "Train →" })))));
  }

  const zone = document.getElementById("dropzone");
  if (zone) {
    const input = document.getElementById("file-input");
    document.getElementById("upload-limit").textContent = `Up to ${fmt.bytes(data.max_upload_bytes)}.`;
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
    });
    input.addEventListener("change", () => input.files.length && upload(input.files[0]));
  }

  // One error of the 422 answer: a message with the line it is on, or, when many rows share
  // it, its first lines and how many rows have it.
  function errorItem(e) {
    const count = e.count || 1;
    if (count === 1) return el("li", {}, el("span", { class: "line", text: e.line ? `line ${e.line}` : "file" }), e.message);
    const lines = e.lines.join(", ") + (count > e.lines.length ? ", …" : "");
    return el("li", {}, el("span", { class: "line", text: `lines ${lines}` }), e.message,
      el("span", { class: "muted", text: ` (${fmt.number(count)} rows)` }));
  }

  function showResult(...nodes) {
    document.getElementById("upload-result").replaceChildren(...nodes);
  }

  function upload(file) {
    const result = document.getElementById("upload-result");
    result.replaceChildren();
    if (file.size > data.max_upload_bytes) {
      return showResult(el("p", { class: "error", text: `${file.name} is ${fmt.bytes(file.size)}: larger than the upload limit of ${fmt.bytes(data.max_upload_bytes)}.` }));
    }
    const progress = document.getElementById("upload-progress");
    const bar = document.getElementById("upload-bar");
    const status = document.getElementById("upload-status");
    progress.hidden = false;
    bar.parentElement.className = "progress large state-running";
    document.getElementById("upload-name").textContent = file.name;
    const form = new FormData();
    form.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/api/datasets");
    for (const [name, value] of Object.entries(tl.headers())) request.setRequestHeader(name, value);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const fraction = event.loaded / event.total;
      bar.style.width = `${(fraction * 100).toFixed(1)}%`;
      status.textContent = fraction < 1 ? `uploading… ${fmt.bytes(event.loaded)} of ${fmt.bytes(event.total)}` : "checking every line…";
    });
    request.addEventListener("load", () => finished(request.status, request.response));
    request.addEventListener("error", () => finished(0, null));
    request.send(form);
  }

  function finished(code, body) {
    const progress = document.getElementById("upload-progress");
    const bar = document.getElementById("upload-bar");
    bar.style.width = "100%";
    progress.hidden = true;
    if (code === 201 || code === 200) {
      const existing = datasets.findIndex((d) => d.id === body.id);
      if (existing === -1) datasets.unshift(body);
      renderList();
      const what = `${fmt.number(body.row_count)} rows · ${data.formats[body.format] || body.format}`;
      return showResult(el("p", { class: body.duplicate ? "hint" : "success" },
        body.duplicate ? "This exact file was uploaded before: " : "Uploaded ",
        el("a", { href: `/datasets/${body.id}`, text: body.name }), ` (${what}). `,
        el("a", { href: `/jobs/new?dataset=${body.id}`, text: "Train on it →" })));
    }
    if (code === 422 && body && Array.isArray(body.errors)) {
      const more = body.error_count - body.errors.reduce((sum, e) => sum + (e.count || 1), 0);
      return showResult(el("div", { class: "upload-errors", role: "alert" },
        el("h3", { text: `The file was not stored: ${fmt.number(body.error_count)} ${body.error_count === 1 ? "problem" : "problems"} to fix` }),
        el("ul", { class: "errors-list" }, body.errors.map(errorItem)),
        more > 0 ? el("p", { class: "muted", text: `…and ${fmt.number(more)} more.` }) : null));
    }
    const message = code === 0 ? "The upload was interrupted: check your connection and try again." : tl.errorText(body);
    showResult(el("p", { class: "error", role: "alert", text: message }));
  }

  renderList();
  // Back from deleting a dataset on its page: say that it is gone.
  const deleted = new URLSearchParams(location.search).get("deleted");
  if (deleted !== null) {
    tl.toast(`Deleted ${deleted}.`);
    history.replaceState(null, "", location.pathname);
  }
})();
