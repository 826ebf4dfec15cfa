/* The sweep page: cancel, and a reload when a trial changes state while the sweep runs. */
"use strict";

(() => {
  const data = tl.pageData();
  const cancel = document.getElementById("cancel-sweep");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!confirm("Cancel this sweep? Its queued and running trials are cancelled and no further trial starts.")) return;
      cancel.disabled = true;
      const response = await tl.api("POST", `/api/sweeps/${data.id}/cancel`);
      if (response.ok) location.reload();
      else {
        cancel.disabled = false;
        tl.toast(tl.errorText(response.data), "error");
      }
    });
  }
  if (data.state !== "running") return;
  const seen = JSON.stringify(data.counts);
  const poll = async () => {
    if (document.hidden) return;
    const response = await tl.api("GET", `/api/sweeps/${data.id}`);
    if (response.ok && (response.data.state !== data.state || JSON.stringify(response.data.counts) !== seen)) {
      location.reload();
    }
  };
  setInterval(poll, 5000);
})();
