// jobgraph's page script: action buttons, the run page's live updates and its log panel. No framework.
// Everything from the server that is not our own rendered markup goes in as text (textContent), never as HTML.
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const message = document.getElementById("message");

  function say(text, refused) {
    message.hidden = false;
    message.textContent = text;
    message.classList.toggle("refused", !!refused);
  }

  // --- actions: POST to the API with the CSRF header, show what it answered -------------------------
  async function act(button) {
    const action = button.dataset.action;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST", credentials: "same-origin", headers: { "X-Jobgraph-CSRF": csrf() },
      });
      let body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      if (!response.ok) {
        say(`${action} refused (${response.status}): ${body.error || response.statusText}`, true);
        return;
      }
      const state = (body.run || body.pipeline || {}).state;
      const details = [body.action && body.action.toLowerCase(), body.run_id && `run ${body.run_id}`,
        state && `now ${state}`].filter(Boolean);
      say(`${action}: done${details.length ? " (" + details.join(", ") + ")" : ""}`, false);
      if (body.run_id && (!run || body.run_id !== run.dataset.run)) {
        const link = document.createElement("a");
        link.href = `/runs/${encodeURIComponent(body.run_id)}`;
        link.textContent = "open the run";
        message.append(" ", link);
      }
      if (body.pipeline) { showPipeline(button, body.pipeline); }
      if (run) { follow(); refreshSoon(); }
    } catch (error) {
      say(`${action} failed: ${error}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // A suspended or resumed pipeline's row shows its new state, and the button that undoes it.
  function showPipeline(button, pipeline) {
    const row = button.closest("tr");
    const badge = row && row.querySelector(".state");
    if (badge) {
      badge.textContent = pipeline.state;
      badge.className = `state p-${pipeline.state}`;
    }
    const next = pipeline.state === "SUSPENDED" ? "resume" : "suspend";
    if (button.dataset.action === "suspend" || button.dataset.action === "resume") {
      button.dataset.url = button.dataset.url.replace(/\/(suspend|resume)$/, `/${next}`);
      button.dataset.action = next;
      button.textContent = next;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { act(button); return; }
    const logButton = event.target.closest(".log-button, svg.gantt .attempt");
    if (logButton) { openLog(logButton.dataset.job, logButton.dataset.attempt); return; }
    const node = event.target.closest("svg.dag .node[data-job]");
    if (node) { showJob(node.dataset.job); }
  });

  // --- the run page ------------------------------------------------------------------------------------
  const run = document.getElementById("run");
  if (!run) { return; }
  const runId = run.dataset.run;
  const api = `/api/v1/runs/${encodeURIComponent(runId)}`;
  const byJob = (selector, job) => document.querySelectorAll(`${selector}[data-job="${CSS.escape(job)}"]`);

  function setState(element, prefix, state) {
    for (const name of [...element.classList]) {
      if (name.startsWith(prefix)) { element.classList.remove(name); }
    }
    element.classList.add(prefix + state);
  }

  function applyChange(data) {
    if (data.run && data.run.state) {
      const badge = document.getElementById("run-state");
      badge.textContent = data.run.state;
      setState(badge, "s-", data.run.state);
      document.getElementById("counts").dataset.runState = data.run.state;
    }
    for (const job of data.jobs || []) {
      for (const node of byJob("svg.dag .node", job.name)) { setState(node, "s-", job.state); }
      for (const cell of document.querySelectorAll(`[data-state-of="${CSS.escape(job.name)}"]`)) {
        cell.textContent = job.state;
        setState(cell, "s-", job.state);
      }
    }
    refreshSoon();
  }

  // The stream's first event is the whole run: the page was drawn from the same store a moment ago, so
  // it is only drawn again if the run moved meanwhile (a 5,000-job run is not walked job by job).
  function compare(data) {
    const counts = document.getElementById("counts");
    const sorted = (object) => JSON.stringify(Object.keys(object || {}).sort().map((k) => [k, object[k]]));
    const shown = JSON.parse(counts.dataset.counts || "{}");
    if (data.run.state !== counts.dataset.runState || sorted(data.run.job_counts) !== sorted(shown)) {
      refreshSoon();
    }
  }

  // The parts that change (graph with its folded counts, Gantt, jobs list) are rendered again by the
  // server, at most once a second however many changes arrive.
  let stream = null;
  let polling = false;
  let refreshTimer = null;
  let lastRefresh = 0;
  function refreshSoon() {
    if (refreshTimer) { return; }
    const wait = Math.max(0, 1000 - (Date.now() - lastRefresh));
    refreshTimer = setTimeout(refresh, wait);
  }

  async function refresh() {
    lastRefresh = Date.now();
    try {
      const query = `?page=${encodeURIComponent(run.dataset.page)}&order=${encodeURIComponent(run.dataset.order)}`;
      const response = await fetch(`/runs/${encodeURIComponent(runId)}/parts${query}`, { credentials: "same-origin" });
      if (response.ok) {
        const parts = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const id of ["counts", "graph", "gantt", "jobs"]) {
          const fresh = parts.getElementById(id);
          const old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(document.adoptNode(fresh)); }
        }
        const state = document.getElementById("counts").dataset.runState;
        const badge = document.getElementById("run-state");
        badge.textContent = state;
        setState(badge, "s-", state);
      }
    } finally {
      refreshTimer = null;
      if (polling && document.getElementById("counts").dataset.runState === "RUNNING") { refreshSoon(); }
    }
  }

  // Live: the API's event stream says what changed; without it (an older server), poll while the run runs.
  function follow() {
    if (stream) { stream.close(); }
    let heard = false;
    stream = new EventSource(`${api}/events`);
    stream.addEventListener("snapshot", (event) => { heard = true; compare(JSON.parse(event.data)); });
    stream.addEventListener("change", (event) => { heard = true; applyChange(JSON.parse(event.data)); });
    stream.addEventListener("end", () => {
      stream.close();
      stream = null;
      if (document.getElementById("counts").dataset.runState === "RUNNING") { refreshSoon(); }
    });
    stream.onerror = () => {
      if (!heard && stream) {
        stream.close(); stream = null; polling = true; refreshSoon();
      }
    };
  }
  // An ended run's page is drawn complete: it listens only once an action here starts it again.
  if (document.getElementById("counts").dataset.runState === "RUNNING") { follow(); }

  function showJob(job) {
    const row = byJob("tbody.job", job)[0];
    if (row) {
      row.scrollIntoView({ block: "center" });
      row.classList.add("picked");
      setTimeout(() => row.classList.remove("picked"), 1500);
    }
  }

  // --- the log panel: the chosen attempt's log, followed while the attempt runs ---------------------
  const panel = document.getElementById("log-panel");
  const log = document.getElementById("log");
  const logStatus = document.getElementById("log-status");
  let following = 0;

  const TAIL = 262144;  // a long log opens at its last 256 KiB, then follows from there

  async function openLog(job, attempt) {
    const mine = ++following;
    panel.hidden = false;
    document.getElementById("log-title").textContent = `${job}, attempt ${attempt}`;
    log.textContent = "";
    logStatus.textContent = "loading…";
    let query = `offset=-${TAIL}&limit=${TAIL}`;
    let first = true;
    const decoder = new TextDecoder();
    const url = `${api}/jobs/${encodeURIComponent(job)}/attempts/${encodeURIComponent(attempt)}/log`;
    while (mine === following) {
      let response;
      try {
        response = await fetch(`${url}?${query}`, { credentials: "same-origin" });
      } catch (error) {
        logStatus.textContent = `cannot read the log: ${error}`;
        return;
      }
      if (mine !== following) { return; }
      if (!response.ok) {
        let body = {};
        try { body = await response.json(); } catch (e) { body = {}; }
        logStatus.textContent = `cannot read the log (${response.status}): ${body.error || response.statusText}`;
        return;
      }
      const bytes = await response.arrayBuffer();
      const next = Number(response.headers.get("X-Log-Next-Offset"));
      if (first && next > bytes.byteLength) {
        log.append(document.createTextNode(`… (the first ${next - bytes.byteLength} bytes are not shown)\n`));
      }
      first = false;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      if (bytes.byteLength) { log.append(document.createTextNode(decoder.decode(bytes, { stream: true }))); }
      if (atBottom) { log.scrollTop = log.scrollHeight; }
      query = `offset=${next}`;
      if (response.headers.get("X-Log-Complete") === "true") {
        logStatus.textContent = "the attempt has ended: its log is complete";
        return;
      }
      logStatus.textContent = "following the log while the attempt runs…";
      if (!bytes.byteLength) { await new Promise((resolve) => setTimeout(resolve, 1000)); }
    }
  }

  document.getElementById("log-close").addEventListener("click", () => { following++; panel.hidden = true; });
})();
