// minipacs web UI: small hand-written script, no framework, no external assets.
// Every action goes through the REST API, so the server's access control decides.
"use strict";

(function () {
  const body = document.body;
  const canWrite = body.dataset.canWrite === "1";

  function message(text, isError) {
    const box = document.getElementById("message");
    if (!box) return;
    box.textContent = text;
    box.className = isError ? "message error" : "message";
    box.hidden = false;
  }

  // The session's CSRF token (base.html), sent with every change: the server refuses changes
  // that another site could have started (web/csrf.py).
  const csrfMeta = document.querySelector("meta[name=csrf-token]");
  const csrfToken = csrfMeta ? csrfMeta.content : "";

  function toLogin() {
    window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }

  async function api(method, url, payload) {
    const init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    if (method !== "GET" && csrfToken) init.headers["X-CSRF-Token"] = csrfToken;
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      return { status: 0, data: { error: { code: "network", message: "the server could not be reached: " + err } } };
    }
    if (response.status === 401 && csrfToken) toLogin();  // the session ended
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    return { status: response.status, data: data };
  }

  // ------------------------------------------------------------ the login page: skip it when logged in
  // (a link from another site arrives without the SameSite=Strict cookie; this page's own request has it)
  if (body.dataset.page === "login") {
    fetch("/ui/session", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (r.status === 200) window.location.replace(body.dataset.next || "/ui/"); })
      .catch(function () {});
  }

  function errorText(result) {
    if (result.data && result.data.error && result.data.error.message) return result.data.error.message;
    return "the server answered HTTP " + result.status;
  }

  // An endpoint this server does not have: no route (404 "nothing at this URL") or no such method (405).
  function missingEndpoint(result) {
    if (result.status === 405) return true;
    return result.status === 404 && !!result.data && !!result.data.error &&
      /nothing at this URL|unknown resource kind/.test(result.data.error.message || "");
  }

  // ------------------------------------------------------------ study labels (core/labels.py)
  document.querySelectorAll("form.add-label").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const label = form.elements.label.value.trim();
      const result = await api("PUT", form.dataset.api + "/" + encodeURIComponent(label));
      if (result.status === 200) window.location.reload();
      else message("Label not added: " + errorText(result), true);
    });
  });
  document.querySelectorAll("button[data-label-remove]").forEach(function (button) {
    button.addEventListener("click", async function () {
      button.disabled = true;
      const result = await api("DELETE", button.dataset.labelRemove);
      if (result.status === 200) window.location.reload();
      else { message("Label not removed: " + errorText(result), true); button.disabled = false; }
    });
  });

  // ------------------------------------------------------------ delete with confirmation
  document.querySelectorAll("button[data-delete]").forEach(function (button) {
    button.addEventListener("click", async function () {
      if (!window.confirm("Delete this " + button.dataset.what + "? This cannot be undone.")) return;
      button.disabled = true;
      const result = await api("DELETE", button.dataset.delete);
      if (result.status === 200) {
        message("Deleted " + result.data.deleted_instances + " instance(s).", false);
        window.location.assign(button.dataset.after);
      } else {
        message("Not deleted: " + errorText(result), true);
        button.disabled = false;
      }
    });
  });

  // ------------------------------------------------------------ send to node, with job progress
  function jobText(job) {
    const parts = [job.state || "running"];
    if (job.total) parts.push((job.done || 0) + "/" + job.total + " done");
    if (job.failed) parts.push(job.failed + " failed");
    if (job.message) parts.push(job.message);
    return parts.join(" · ");
  }

  const FINISHED = /^(done|finished|success|succeeded|completed|failed|error|cancelled|canceled)$/i;

  async function followJob(id, out) {
    for (;;) {
      const result = await api("GET", "/api/jobs/" + encodeURIComponent(id));
      if (missingEndpoint(result)) { out.textContent = "sent as job " + id + " (this server cannot show job progress)"; return; }
      if (result.status !== 200) { out.textContent = "job " + id + ": " + errorText(result); return; }
      out.textContent = jobText(result.data);
      if (FINISHED.test(String(result.data.state || ""))) return;
      await new Promise(function (resolve) { setTimeout(resolve, 700); });
    }
  }

  document.querySelectorAll("form.send").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = form.querySelector(".job");
      const select = form.querySelector("select");
      const option = select.options[select.selectedIndex];
      out.textContent = "sending…";
      const payload = { node: select.value || option.dataset.aeTitle, level: form.dataset.level,
        uids: [form.dataset.uid] };
      const result = await api("POST", "/api/send", payload);
      if (missingEndpoint(result)) {
        out.textContent = "";
        message("Sending is not available on this server yet: it has no /api/send endpoint.", true);
        return;
      }
      if (result.status >= 300) { out.textContent = ""; message("Not sent: " + errorText(result), true); return; }
      const job = result.data || {};
      const id = job.id !== undefined ? job.id : (job.job_id !== undefined ? job.job_id : (job.job && job.job.id));
      if (id === undefined) { out.textContent = jobText(job); return; }
      out.textContent = "job " + id + " started";
      followJob(id, out);
    });
  });

  // ------------------------------------------------------------ worklist: add (PS3.18 JSON), remove
  function worklistDataset(f) {
    function put(ds, tag, vr, value) {
      const v = String(value || "").trim();
      if (v) ds[tag] = vr === "PN" ? { vr: vr, Value: [{ Alphabetic: v }] } : { vr: vr, Value: [v] };
    }
    const sps = {};
    put(sps, "00400001", "AE", f.get("station"));
    put(sps, "00400002", "DA", String(f.get("date") || "").replace(/-/g, ""));
    put(sps, "00400003", "TM", String(f.get("time") || "").replace(/:/g, ""));
    put(sps, "00080060", "CS", String(f.get("modality") || "").toUpperCase());
    put(sps, "00400007", "LO", f.get("procedure"));
    const ds = {};
    put(ds, "00080005", "CS", "ISO_IR 192");
    put(ds, "00100020", "LO", f.get("patient_id"));
    put(ds, "00100010", "PN", f.get("patient_name"));
    put(ds, "00080050", "SH", f.get("accession"));
    put(ds, "00321060", "LO", f.get("procedure"));
    ds["00400100"] = { vr: "SQ", Value: [sps] };
    return ds;
  }

  const addWorklist = document.getElementById("add-worklist");
  if (addWorklist) {
    addWorklist.addEventListener("submit", async function (event) {
      event.preventDefault();
      const result = await api("POST", "/api/worklist", worklistDataset(new FormData(addWorklist)));
      if (result.status === 201) window.location.reload();
      else message("Not added: " + errorText(result), true);
    });
  }

  document.querySelectorAll("button.remove-worklist").forEach(function (button) {
    button.addEventListener("click", async function () {
      if (!window.confirm("Delete worklist entry " + button.dataset.what + "? This cannot be undone.")) return;
      button.disabled = true;
      const result = await api("DELETE", "/api/worklist/" + encodeURIComponent(button.dataset.id));
      if (result.status === 200) window.location.reload();
      else { message("Not deleted: " + errorText(result), true); button.disabled = false; }
    });
  });

  // ------------------------------------------------------------ nodes: echo, add, remove
  document.querySelectorAll("button.echo").forEach(function (button) {
    button.addEventListener("click", async function () {
      const out = button.nextElementSibling;
      out.textContent = "echoing…";
      const result = await api("POST", "/api/nodes/" + encodeURIComponent(button.dataset.node) + "/echo");
      if (missingEndpoint(result)) {
        out.textContent = "echo is not available on this server yet (no /api/nodes/{id}/echo endpoint)";
        return;
      }
      if (result.status >= 300) { out.textContent = "failed: " + errorText(result); return; }
      const d = result.data || {};
      out.textContent = (d.ok ? "ok" : "failed") + (d.message ? ": " + d.message : "") +
        (d.ms !== undefined ? " (" + d.ms + " ms)" : "");
    });
  });

  // ------------------------------------------------------------ diagnostics: the doctor's steps for one node
  function doctorSteps(cell, report) {
    cell.textContent = "";
    const list = document.createElement("ol");
    list.className = "doctor-steps";
    (report.steps || []).forEach(function (step) {
      const item = document.createElement("li");
      item.className = "step " + step.outcome;
      item.textContent = "step " + step.number + " (" + step.name + "): " + step.outcome + ", " + step.ms + " ms: " +
        step.verdict;
      if (step.cause) {
        const cause = document.createElement("div");
        cause.textContent = "likely cause: " + step.cause;
        item.appendChild(cause);
      }
      if (step.fix) {
        const fix = document.createElement("div");
        fix.className = "fix";
        fix.textContent = "fix: " + step.fix;
        item.appendChild(fix);
      }
      list.appendChild(item);
    });
    const verdict = document.createElement("p");
    verdict.textContent = report.ok ? "all checks passed" : "stopped at the first failure";
    cell.appendChild(verdict);
    cell.appendChild(list);
  }

  document.querySelectorAll("button.doctor").forEach(function (button) {
    button.addEventListener("click", async function () {
      const cell = button.closest("tr").querySelector(".doctor-result");
      const moveTest = button.dataset.moveTest === "1";
      if (moveTest && !window.confirm("Move one instance from this node to us, to test the way back?")) return;
      cell.textContent = "checking…";
      const result = await api("POST", "/api/nodes/" + encodeURIComponent(button.dataset.node) + "/doctor",
        { move_test: moveTest });
      if (result.status >= 300) { cell.textContent = "failed: " + errorText(result); return; }
      doctorSteps(cell, result.data || {});
    });
  });

  document.querySelectorAll("button.remove-node").forEach(function (button) {
    button.addEventListener("click", async function () {
      const title = button.dataset.aeTitle;
      if (!window.confirm("Remove node " + title + " at " + button.dataset.host + "?")) return;
      const result = await api("DELETE", "/api/nodes/" + encodeURIComponent(title) +
        "?host=" + encodeURIComponent(button.dataset.host));
      if (result.status === 200) window.location.reload();
      else message("Not removed: " + errorText(result), true);
    });
  });

  function nodePayload(form) {
    const f = new FormData(form);
    return { ae_title: f.get("ae_title"), host: f.get("host"), port: Number(f.get("port")),
      description: f.get("description") || "",
      permissions: String(f.get("permissions") || "").split(",").map(function (s) { return s.trim(); })
        .filter(Boolean) };
  }

  const addNode = document.getElementById("add-node");
  if (addNode) {
    addNode.addEventListener("submit", async function (event) {
      event.preventDefault();
      const result = await api("POST", "/api/nodes", nodePayload(addNode));
      if (result.status === 201) window.location.reload();
      else message("Not added: " + errorText(result), true);
    });
  }

  // Edit: the row's Edit button fills the (hidden) edit form; Save PUTs the whole node.
  const editNode = document.getElementById("edit-node");
  if (editNode) {
    const section = document.getElementById("edit-node-section");
    const fromDataset = { ae_title: "aeTitle", host: "host", port: "port", description: "description",
      permissions: "permissions" };
    document.querySelectorAll("button.edit-node").forEach(function (button) {
      button.addEventListener("click", function () {
        Object.keys(fromDataset).forEach(function (name) {
          editNode.elements[name].value = button.dataset[fromDataset[name]] || "";
        });
        editNode.dataset.node = button.dataset.node;
        section.querySelector("h2").textContent = "Edit node " + button.dataset.aeTitle + " at " +
          button.dataset.host + ":" + button.dataset.port;
        section.hidden = false;
        editNode.elements.ae_title.focus();
      });
    });
    editNode.querySelector("button.cancel").addEventListener("click", function () { section.hidden = true; });
    editNode.addEventListener("submit", async function (event) {
      event.preventDefault();
      const result = await api("PUT", "/api/nodes/" + encodeURIComponent(editNode.dataset.node),
        nodePayload(editNode));
      if (result.status === 200) window.location.reload();
      else message("Not saved: " + errorText(result), true);
    });
  }

  // ------------------------------------------------------------ query a remote node (C-FIND), retrieve from it
  // Result columns per level: (header, PS3.18 JSON tag). Series rows also carry their study's attributes.
  const REMOTE_COLUMNS = {
    study: [["Patient", "00100010"], ["Patient ID", "00100020"], ["Date", "00080020"], ["Modalities", "00080061"],
      ["Accession", "00080050"], ["Description", "00081030"], ["Instances", "00201208"]],
    series: [["Patient", "00100010"], ["Study date", "00080020"], ["Study", "00081030"], ["Number", "00200011"],
      ["Modality", "00080060"], ["Series", "0008103E"], ["Instances", "00201209"]],
  };
  const STUDY_UID = "0020000D", SERIES_UID = "0020000E";
  const MAX_STUDIES = 200, MAX_STUDIES_FOR_SERIES = 50;

  // A PS3.18 JSON value as text: names without '^', dates as YYYY-MM-DD.
  function jsonText(match, tag) {
    const element = match[tag];
    if (!element || !element.Value) return "";
    const text = element.Value.map(function (v) {
      return v !== null && typeof v === "object" ? (v.Alphabetic || "") : String(v);
    }).join("\\");
    if (element.vr === "PN") return text.replace(/\^+/g, " ").trim();
    if (element.vr === "DA" && /^\d{8}$/.test(text)) return text.slice(0, 4) + "-" + text.slice(4, 6) + "-" + text.slice(6);
    return text;
  }

  // The form -> study-level C-FIND keys (PS3.4 C.2.2.2): a name is matched anywhere unless it has a wildcard.
  function studyKeys(f, modalityToo) {
    const keys = {};
    const value = function (name) { return String(f.get(name) || "").trim(); };
    if (value("name")) keys.PatientName = /[*?]/.test(value("name")) ? value("name") : "*" + value("name") + "*";
    if (value("pid")) keys.PatientID = value("pid");
    if (value("accession")) keys.AccessionNumber = value("accession");
    const from = value("from").replace(/-/g, ""), to = value("to").replace(/-/g, "");
    if (from || to) keys.StudyDate = from === to ? from : from + "-" + to;
    if (modalityToo && value("modality")) keys.ModalitiesInStudy = value("modality").toUpperCase();
    return keys;
  }

  async function remoteQuery(node, level, keys, limit) {
    const result = await api("POST", "/api/nodes/" + encodeURIComponent(node) + "/query",
      { level: level, keys: keys, limit: limit });
    if (result.status !== 200) throw new Error(errorText(result));
    return result.data;
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  // Poll a job until it is done or failed; onUpdate sees every state on the way.
  async function pollJob(id, onUpdate) {
    for (;;) {
      const result = await api("GET", "/api/jobs/" + encodeURIComponent(id));
      if (result.status !== 200) return { state: "failed", done: 0, failed: 0, message: errorText(result) };
      onUpdate(result.data);
      if (["done", "failed", "cancelled"].indexOf(result.data.state) >= 0) return result.data;
      await sleep(500);
    }
  }

  const remoteForm = document.getElementById("remote-query");
  if (remoteForm) remotePage(remoteForm);

  function remotePage(form) {
    const status = document.getElementById("remote-status");
    const results = document.getElementById("remote-results");
    const toolbar = document.getElementById("retrieve");  // absent for a role that may not retrieve
    const state = { node: "", nodeLabel: "", level: "study", matches: [] };

    function showMatches() {
      const columns = REMOTE_COLUMNS[state.level];
      const head = results.tHead, rows = results.tBodies[0];
      head.textContent = "";
      rows.textContent = "";
      const headRow = head.insertRow();
      const all = document.createElement("input");
      all.type = "checkbox";
      all.title = "select all";
      headRow.appendChild(document.createElement("th")).appendChild(all);
      columns.forEach(function (c) { headRow.appendChild(document.createElement("th")).textContent = c[0]; });
      state.matches.forEach(function (m) {
        const row = rows.insertRow();
        const box = document.createElement("input");
        box.type = "checkbox";
        box.className = "pick";
        box.value = jsonText(m, state.level === "study" ? STUDY_UID : SERIES_UID);
        box.dataset.study = jsonText(m, STUDY_UID);
        box.dataset.what = jsonText(m, "00081030") || box.dataset.study;
        box.disabled = !toolbar || !box.value;
        row.insertCell().appendChild(box);
        columns.forEach(function (c) { row.insertCell().textContent = jsonText(m, c[1]); });
      });
      all.disabled = !toolbar;
      all.addEventListener("change", function () {
        rows.querySelectorAll("input.pick:not(:disabled)").forEach(function (b) { b.checked = all.checked; });
        updateButton();
      });
      results.hidden = !state.matches.length;
      if (toolbar) toolbar.hidden = !state.matches.length;
      updateButton();
    }

    function picked() { return Array.from(results.querySelectorAll("input.pick:checked")); }
    function updateButton() { if (toolbar) document.getElementById("retrieve-button").disabled = !picked().length; }
    results.addEventListener("change", updateButton);

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const f = new FormData(form);
      const select = form.elements.node;
      state.node = f.get("node");
      state.nodeLabel = select.options[select.selectedIndex].textContent;
      state.level = f.get("level") === "series" ? "series" : "study";
      state.matches = [];
      showMatches();
      document.getElementById("message").hidden = true;
      status.textContent = "asking " + state.nodeLabel + "…";
      try {
        const studies = await remoteQuery(state.node, "study", studyKeys(f, state.level === "study"), MAX_STUDIES);
        let note = studies.truncated ? " (the first " + MAX_STUDIES + " only; narrow the search)" : "";
        if (state.level === "study") {
          state.matches = studies.results;
        } else {
          // Series: the series of each matching study (a hierarchical query names its study, PS3.4 C.4.1.2.2).
          const modality = String(f.get("modality") || "").trim().toUpperCase();
          for (const study of studies.results.slice(0, MAX_STUDIES_FOR_SERIES)) {
            const keys = { StudyInstanceUID: jsonText(study, STUDY_UID) };
            if (modality) keys.Modality = modality;
            const series = await remoteQuery(state.node, "series", keys, 1000);
            series.results.forEach(function (s) { state.matches.push(Object.assign({}, study, s)); });
          }
          if (studies.results.length > MAX_STUDIES_FOR_SERIES) {
            note = " (the series of the first " + MAX_STUDIES_FOR_SERIES + " studies only; narrow the search)";
          }
        }
        status.textContent = state.matches.length + " " + (state.level === "study" ? "study(ies)" : "series") +
          " on " + state.nodeLabel + note;
        showMatches();
      } catch (err) {
        status.textContent = "";
        message("Search failed: " + err.message, true);
      }
    });

    if (toolbar) retrieveControls();

    function retrieveControls() {
      const button = document.getElementById("retrieve-button");
      const progress = document.getElementById("retrieve-progress");
      const summary = document.getElementById("retrieve-summary");
      const method = toolbar.querySelector("select[name=method]");

      // Job n of count: the bar counts instances within it (indeterminate until the node says how many).
      function showProgress(job, n, count) {
        const finished = (job.done || 0) + (job.failed || 0);
        if (job.total) progress.value = (n + finished / job.total) / count;
        else if (n === 0) progress.removeAttribute("value");
        summary.textContent = (job.total ? finished + " of " + job.total + " instance(s)" :
          (job.state === "queued" ? (job.attempts ? job.message : "waiting for a free slot") : "asking " + state.nodeLabel)) +
          (count > 1 ? " (request " + (n + 1) + " of " + count + ")" : "") + "…";
      }

      // One request for studies; for series, one per study, whose UID the identifier names (PS3.4 C.4.2.2.1).
      function requests(boxes) {
        const uids = function (group) { return group.map(function (b) { return b.value; }); };
        if (state.level === "study") return [{ level: "study", uids: uids(boxes), method: method.value }];
        const byStudy = new Map();
        boxes.forEach(function (b) { byStudy.set(b.dataset.study, (byStudy.get(b.dataset.study) || []).concat([b])); });
        return Array.from(byStudy, function (entry) {
          return { level: "series", study: entry[0], uids: uids(entry[1]), method: method.value };
        });
      }

      function finalText(sum) {
        const counts = sum.completed + " completed, " + sum.warning + " with warnings, " + sum.failed + " failed";
        if (!sum.jobs) return "Not retrieved: " + sum.reasons.join(" ");
        if (sum.reasons.length) return "Retrieve failed: " + counts + ". " + sum.reasons.join(" ");
        if (!sum.completed && !sum.warning && !sum.failed) {
          return "Retrieved nothing: " + state.nodeLabel + " found no instances for the selection (" + counts + ").";
        }
        return "Retrieved: " + counts + ".";
      }

      function openLinks(boxes) {
        const seen = new Set();
        boxes.forEach(function (box) {
          if (seen.has(box.dataset.study)) return;
          seen.add(box.dataset.study);
          const a = document.createElement("a");
          a.className = "retrieved";
          a.href = "/ui/studies/" + encodeURIComponent(box.dataset.study);
          a.textContent = "Open " + box.dataset.what;
          summary.append(" ", a);
        });
      }

      button.addEventListener("click", async function () {
        const boxes = picked();
        if (!boxes.length) return;
        button.disabled = true;
        summary.className = "";
        summary.textContent = "starting…";
        progress.hidden = false;
        progress.removeAttribute("value");
        const todo = requests(boxes), node = state.node;  // a new search meanwhile changes state
        const sum = { jobs: 0, completed: 0, warning: 0, failed: 0, reasons: [] };
        for (let n = 0; n < todo.length; n++) {
          const result = await api("POST", "/api/nodes/" + encodeURIComponent(node) + "/retrieve", todo[n]);
          if (result.status !== 202) { sum.reasons.push(errorText(result)); break; }
          const job = await pollJob(result.data.id, function (j) { showProgress(j, n, todo.length); });
          sum.jobs += 1;
          sum.completed += job.completed !== undefined ? job.completed : job.done || 0;
          sum.warning += job.warning || 0;
          sum.failed += job.failed || 0;
          if (job.state !== "done") sum.reasons.push(job.message);
        }
        const ok = sum.jobs && !sum.reasons.length && !sum.failed && sum.completed + sum.warning > 0;
        progress.hidden = !sum.jobs;
        if (ok) progress.value = 1;
        else if (!progress.hasAttribute("value")) progress.value = 0;
        summary.textContent = finalText(sum);
        summary.className = ok ? "ok" : "failed";
        if (ok) openLinks(boxes);
        updateButton();
      });
    }
  }

  // ------------------------------------------------------------ upload with progress and per-file results
  const dropzone = document.getElementById("dropzone");
  if (dropzone && canWrite) {
    const input = document.getElementById("files");
    const progress = document.getElementById("progress");
    const progressText = document.getElementById("progress-text");
    const results = document.getElementById("results");

    function addRow(name, status, details, link) {
      const row = results.tBodies[0].insertRow();
      row.insertCell().textContent = name;
      const cell = row.insertCell();
      cell.textContent = status;
      cell.className = status === "failed" ? "failed" : "ok";
      const detailCell = row.insertCell();
      if (link) {
        const a = document.createElement("a");
        a.href = link;
        a.textContent = details;
        detailCell.appendChild(a);
      } else {
        detailCell.textContent = details;
      }
      results.hidden = false;
    }

    function sendOne(file, done, total) {
      return new Promise(function (resolve) {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", "/api/instances");
        xhr.setRequestHeader("Accept", "application/json");
        xhr.setRequestHeader("Content-Type", /\.zip$/i.test(file.name) ? "application/zip" : "application/dicom");
        if (csrfToken) xhr.setRequestHeader("X-CSRF-Token", csrfToken);
        xhr.upload.onprogress = function (e) {
          if (e.lengthComputable) {
            progress.value = (done + e.loaded) / total;
            progressText.textContent = Math.round(100 * progress.value) + "%";
          }
        };
        xhr.onload = function () {
          let data = null;
          try { data = JSON.parse(xhr.responseText); } catch (err) { data = null; }
          if (data && data.results) {
            data.results.forEach(function (r) {
              const name = data.results.length > 1 ? file.name + ": " + r.file : file.name;
              if (r.status === "failed") addRow(name, "failed", r.message || r.error || "", null);
              else addRow(name, r.status, r.SOPInstanceUID || "", r.StudyInstanceUID ?
                "/ui/studies/" + encodeURIComponent(r.StudyInstanceUID) : null);
            });
          } else {
            addRow(file.name, "failed", errorText({ status: xhr.status, data: data }), null);
          }
          resolve();
        };
        xhr.onerror = function () { addRow(file.name, "failed", "the upload was interrupted", null); resolve(); };
        xhr.send(file);
      });
    }

    async function uploadAll(files) {
      const list = Array.from(files);
      if (!list.length) return;
      const total = list.reduce(function (sum, f) { return sum + f.size; }, 0) || 1;
      progress.hidden = false;
      progress.value = 0;
      let done = 0;
      for (const file of list) {
        await sendOne(file, done, total);
        done += file.size;
        progress.value = done / total;
        progressText.textContent = Math.round(100 * progress.value) + "%";
      }
      progressText.textContent = "done: " + list.length + " file(s)";
    }

    ["dragenter", "dragover"].forEach(function (name) {
      dropzone.addEventListener(name, function (e) { e.preventDefault(); dropzone.classList.add("over"); });
    });
    dropzone.addEventListener("dragleave", function () { dropzone.classList.remove("over"); });
    dropzone.addEventListener("drop", function (e) {
      e.preventDefault();
      dropzone.classList.remove("over");
      uploadAll(e.dataTransfer.files);
    });
    input.addEventListener("change", function () { uploadAll(input.files); input.value = ""; });
  }

  // ------------------------------------------------------------ image viewer
  const dataNode = document.getElementById("viewer-data");
  if (dataNode) viewer(JSON.parse(dataNode.textContent));

  function viewer(data) {
    const canvas = document.getElementById("canvas");
    const viewport = document.getElementById("viewport");
    const ctx2d = canvas.getContext("2d");
    const status = document.getElementById("status");
    const preset = document.getElementById("preset");
    const playButton = document.getElementById("play");
    const fps = document.getElementById("fps");
    const frames = [];
    data.instances.forEach(function (inst) {
      for (let n = 1; n <= inst.frames; n++) frames.push({ sop: inst.sop, frame: n });
    });
    const state = { index: 0, wc: null, ww: null, zoom: 1, panX: 0, panY: 0, image: null, timer: null,
      loading: false, pending: false, baseWindow: [128, 256] };
    const cache = new Map();

    if (!frames.length) { status.textContent = "this series has no images"; return; }

    function url(i) {
      const f = frames[i];
      let out = "/dicom-web/studies/" + encodeURIComponent(data.study) + "/series/" +
        encodeURIComponent(data.series) + "/instances/" + encodeURIComponent(f.sop) + "/frames/" + f.frame +
        "/rendered";
      if (state.wc !== null) out += "?window=" + Math.round(state.wc) + "," + Math.max(1, Math.round(state.ww));
      return out;
    }

    function fetchImage(src) {
      if (cache.has(src)) return cache.get(src);
      const promise = new Promise(function (resolve, reject) {
        const img = new Image();
        img.onload = function () { resolve(img); };
        img.onerror = function () { cache.delete(src); reject(new Error("cannot load " + src)); };
        img.src = src;
      });
      cache.set(src, promise);
      if (cache.size > 300) cache.delete(cache.keys().next().value);
      return promise;
    }

    function draw() {
      const img = state.image;
      const w = viewport.clientWidth, h = viewport.clientHeight;
      const ratio = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
        canvas.width = Math.round(w * ratio);
        canvas.height = Math.round(h * ratio);
      }
      ctx2d.setTransform(1, 0, 0, 1, 0, 0);
      ctx2d.fillStyle = "#000";
      ctx2d.fillRect(0, 0, canvas.width, canvas.height);
      if (!img) return;
      const scale = Math.min(canvas.width / img.width, canvas.height / img.height) * state.zoom;
      const x = (canvas.width - img.width * scale) / 2 + state.panX * ratio;
      const y = (canvas.height - img.height * scale) / 2 + state.panY * ratio;
      ctx2d.imageSmoothingEnabled = scale < 1;
      ctx2d.drawImage(img, x, y, img.width * scale, img.height * scale);
      const f = frames[state.index];
      status.textContent = "image " + (state.index + 1) + "/" + frames.length +
        (f.frame > 1 || data.instances.length < frames.length ? " (frame " + f.frame + ")" : "") +
        " · W " + (state.ww === null ? "as stored" : Math.round(state.ww)) +
        " L " + (state.wc === null ? "as stored" : Math.round(state.wc)) +
        " · zoom " + state.zoom.toFixed(2);
    }

    // One request in flight; the newest wish wins (window drags ask faster than the server renders).
    async function show() {
      if (state.loading) { state.pending = true; return; }
      state.loading = true;
      do {
        state.pending = false;
        try {
          state.image = await fetchImage(url(state.index));
          draw();
          body.dataset.viewerReady = "1";
        } catch (err) {
          status.textContent = String(err.message || err);
        }
      } while (state.pending);
      state.loading = false;
      for (let k = 1; k <= 3 && state.index + k < frames.length; k++) fetchImage(url(state.index + k)).catch(function () {});
    }

    function go(delta) {
      state.index = Math.min(frames.length - 1, Math.max(0, state.index + delta));
      show();
    }

    function setWindow(wc, ww) {
      state.wc = wc;
      state.ww = ww === null ? null : Math.max(1, ww);
      show();
    }

    function zoomBy(factor) {
      state.zoom = Math.min(20, Math.max(0.1, state.zoom * factor));
      draw();
    }

    function togglePlay() {
      if (state.timer) {
        clearInterval(state.timer);
        state.timer = null;
        playButton.textContent = "Play";
        return;
      }
      const rate = Math.min(60, Math.max(1, Number(fps.value) || 10));
      playButton.textContent = "Stop";
      state.timer = setInterval(function () {
        if (state.loading) return;
        state.index = (state.index + 1) % frames.length;
        show();
      }, 1000 / rate);
    }

    // The stored window (if any) is where a drag starts from.
    const first = frames[0];
    api("GET", "/dicom-web/studies/" + encodeURIComponent(data.study) + "/series/" + encodeURIComponent(data.series) +
        "/instances/" + encodeURIComponent(first.sop) + "/metadata").then(function (result) {
      const meta = result.status === 200 && result.data && result.data[0];
      if (!meta) return;
      const value = function (tag) { return meta[tag] && meta[tag].Value ? Number(meta[tag].Value[0]) : NaN; };
      const wc = value("00281050"), ww = value("00281051");
      if (isFinite(wc) && isFinite(ww) && ww > 0) { state.baseWindow = [wc, ww]; return; }
      const bits = value("00280101");
      const slope = isFinite(value("00281053")) ? value("00281053") : 1;
      const intercept = isFinite(value("00281052")) ? value("00281052") : 0;
      if (isFinite(bits)) {
        const range = Math.pow(2, bits) * slope;
        state.baseWindow = [intercept + range / 2, range];
      }
    });

    let drag = null;
    viewport.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    viewport.addEventListener("mousedown", function (e) {
      viewport.focus();
      const pan = e.button === 2 || e.shiftKey || e.button === 1;
      if (!pan && state.wc === null) { state.wc = state.baseWindow[0]; state.ww = state.baseWindow[1]; }
      drag = { x: e.clientX, y: e.clientY, pan: pan, wc: state.wc, ww: state.ww, panX: state.panX, panY: state.panY };
      e.preventDefault();
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.pan) {
        state.panX = drag.panX + dx;
        state.panY = drag.panY + dy;
        draw();
      } else {
        const k = Math.max(drag.ww, 2) / 256;
        preset.value = "";
        setWindow(drag.wc + dy * k, drag.ww + dx * k);
      }
    });
    window.addEventListener("mouseup", function () { drag = null; });
    // Touch (issue 12 item 21): one finger drags window/level, two fingers pinch to zoom and move to pan,
    // a quick one-finger swipe left/right goes to the next/previous image.
    let touch = null;
    function spread(t) { return Math.hypot(t[0].clientX - t[1].clientX, t[0].clientY - t[1].clientY); }
    function middle(t) { return { x: (t[0].clientX + t[1].clientX) / 2, y: (t[0].clientY + t[1].clientY) / 2 }; }
    viewport.addEventListener("touchstart", function (e) {
      e.preventDefault();
      const t = e.touches;
      if (t.length === 1) {
        if (state.wc === null) { state.wc = state.baseWindow[0]; state.ww = state.baseWindow[1]; }
        touch = { x: t[0].clientX, y: t[0].clientY, at: Date.now(), wc: state.wc, ww: state.ww, moved: 0 };
      } else if (t.length === 2) {
        const m = middle(t);
        touch = { pinch: spread(t), zoom: state.zoom, x: m.x, y: m.y, panX: state.panX, panY: state.panY };
      }
    }, { passive: false });
    viewport.addEventListener("touchmove", function (e) {
      e.preventDefault();
      const t = e.touches;
      if (!touch) return;
      if (touch.pinch && t.length === 2) {
        const m = middle(t);
        state.zoom = Math.min(20, Math.max(0.1, touch.zoom * spread(t) / Math.max(touch.pinch, 1)));
        state.panX = touch.panX + m.x - touch.x;
        state.panY = touch.panY + m.y - touch.y;
        draw();
      } else if (!touch.pinch && t.length === 1) {
        const dx = t[0].clientX - touch.x, dy = t[0].clientY - touch.y;
        touch.moved = Math.max(touch.moved, Math.abs(dy));
        touch.dx = dx;
        if (Math.abs(dy) > 8) {
          const k = Math.max(touch.ww, 2) / 256;
          preset.value = "";
          setWindow(touch.wc + dy * k, touch.ww + dx * k);
        }
      }
    }, { passive: false });
    viewport.addEventListener("touchend", function (e) {
      e.preventDefault();
      if (touch && !touch.pinch && touch.moved <= 8 && Math.abs(touch.dx || 0) > 40 && Date.now() - touch.at < 600) {
        go(touch.dx < 0 ? 1 : -1);
      }
      if (e.touches.length === 0) touch = null;
    }, { passive: false });
    viewport.addEventListener("wheel", function (e) {
      e.preventDefault();
      if (e.ctrlKey) zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15);
      else go(e.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    document.addEventListener("keydown", function (e) {
      if (e.target && /INPUT|SELECT|TEXTAREA/.test(e.target.tagName)) return;
      const keys = { ArrowDown: function () { go(1); }, ArrowRight: function () { go(1); },
        ArrowUp: function () { go(-1); }, ArrowLeft: function () { go(-1); },
        PageDown: function () { go(10); }, PageUp: function () { go(-10); },
        Home: function () { go(-frames.length); }, End: function () { go(frames.length); },
        "+": function () { zoomBy(1.25); }, "=": function () { zoomBy(1.25); }, "-": function () { zoomBy(0.8); },
        " ": togglePlay };
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
    });
    preset.addEventListener("change", function () {
      if (!preset.value) { setWindow(null, null); return; }
      const parts = preset.value.split(",").map(Number);
      setWindow(parts[0], parts[1]);
    });
    playButton.addEventListener("click", togglePlay);
    document.getElementById("reset").addEventListener("click", function () {
      state.zoom = 1; state.panX = 0; state.panY = 0; preset.value = ""; setWindow(null, null);
    });
    window.addEventListener("resize", draw);
    window.minipacsViewer = { state: state, frames: frames, go: go, setWindow: setWindow, zoomBy: zoomBy };
    show();
  }

  // ------------------------------------------------------------ the Jobs page: live progress, cancel, retry
  const jobsTable = document.getElementById("jobs");
  if (jobsTable) jobsPage(jobsTable);

  function jobsPage(table) {
    const rows = table.tBodies[0];
    const emptyBox = document.getElementById("jobs-empty");
    const query = new URLSearchParams({ limit: table.dataset.limit || "100" });
    if (table.dataset.state) query.append("state", table.dataset.state);

    function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }
    function button(td, cls, label, id) {
      const b = document.createElement("button");
      b.type = "button"; b.className = cls; b.dataset.job = id; b.textContent = label;
      td.appendChild(document.createTextNode(" ")); td.appendChild(b);
    }
    function row(job) {
      const tr = document.createElement("tr");
      tr.dataset.id = job.id; tr.className = job.state;
      cell(tr, String(job.id));
      cell(tr, (job.created_at || "").slice(0, 19).replace("T", " "));
      cell(tr, job.kind);
      cell(tr, job.description);
      const badge = document.createElement("span");
      badge.className = "badge " + job.state; badge.textContent = job.state;
      cell(tr, "").appendChild(badge);
      const progressCell = cell(tr, "");
      const bar = document.createElement("progress");
      bar.max = job.total || 1; bar.value = job.total ? (job.done || 0) + (job.failed || 0) : 0;
      progressCell.appendChild(bar);
      progressCell.appendChild(document.createTextNode(" " + (job.done || 0) + (job.total ? "/" + job.total : "") +
        (job.failed ? " (" + job.failed + " failed)" : "")));
      const said = cell(tr, job.message || "");
      if (job.last_error && (job.message || "").indexOf(job.last_error) < 0) {
        said.appendChild(document.createElement("br"));
        const small = document.createElement("small");
        small.textContent = "last error: " + job.last_error;
        said.appendChild(small);
      }
      cell(tr, job.attempts + " of " + job.max_attempts);
      cell(tr, job.runner || "");
      const actions = cell(tr, "");
      if (canWrite) {
        if ((job.state === "queued" || job.state === "running") && !job.cancel_requested) button(actions, "job-cancel", "Cancel", job.id);
        if (job.state === "failed" || job.state === "cancelled") button(actions, "job-retry", "Retry", job.id);
        else if (job.state === "queued" && job.attempts) button(actions, "job-retry", "Retry now", job.id);
      }
      return tr;
    }
    async function refresh() {
      const result = await api("GET", "/api/jobs?" + query.toString());
      if (result.status !== 200 || !Array.isArray(result.data)) return;
      rows.replaceChildren.apply(rows, result.data.map(row));
      if (emptyBox) emptyBox.hidden = result.data.length > 0;
    }
    table.addEventListener("click", async function (event) {
      const b = event.target.closest("button[data-job]");
      if (!b) return;
      const action = b.classList.contains("job-cancel") ? "cancel" : "retry";
      b.disabled = true;
      const result = await api("POST", "/api/jobs/" + encodeURIComponent(b.dataset.job) + "/" + action);
      if (result.status >= 300) message("Job " + b.dataset.job + ": " + errorText(result), true);
      await refresh();
    });
    window.setInterval(refresh, 2000);
  }

  // ------------------------------------------------------------ anonymize a study (web/rest_anonymize.py)
  document.querySelectorAll("form.anonymize").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = form.querySelector(".job");
      const options = Array.from(form.querySelectorAll("input[name=option]:checked")).map(function (b) { return b.value; });
      const keep = form.querySelector("input[name=keep_original]").checked;
      out.textContent = "anonymizing…";
      const result = await api("POST", form.dataset.api, { options: options, keep_original: keep });
      if (result.status === 202 && result.data) { out.textContent = "job " + result.data.job + " started"; followJob(result.data.job, out); return; }
      if (result.status !== 200) { out.textContent = ""; message("Not anonymized: " + errorText(result), true); return; }
      out.textContent = "";
      message("Anonymized " + result.data.instances + " instance(s) into study " + result.data.study + ".", false);
      window.location.assign(form.dataset.studyPage + "studies/" + encodeURIComponent(result.data.study));
    });
  });

  // ------------------------------------------------------------ rules (admin): create, delete
  const addRule = document.getElementById("add-rule");
  if (addRule) {
    addRule.addEventListener("submit", async function (event) {
      event.preventDefault();
      let rule;
      try { rule = JSON.parse(new FormData(addRule).get("rule")); } catch (err) {
        message("Not created: the rule is not valid JSON (" + err.message + ")", true);
        return;
      }
      const result = await api("POST", "/api/rules", rule);
      if (result.status === 201) window.location.reload();
      else message("Not created: " + errorText(result), true);
    });
  }

  document.querySelectorAll("button.remove-rule").forEach(function (button) {
    button.addEventListener("click", async function () {
      if (!window.confirm("Delete rule " + button.dataset.rule + "? Deliveries already queued still run.")) return;
      button.disabled = true;
      const result = await api("DELETE", "/api/rules/" + encodeURIComponent(button.dataset.rule));
      if (result.status === 204) window.location.reload();
      else { message("Not deleted: " + errorText(result), true); button.disabled = false; }
    });
  });

  // ------------------------------------------------------------ retention (admin): run now (web/rest_retention.py)
  const retentionRun = document.getElementById("retention-run");
  if (retentionRun) {
    retentionRun.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = retentionRun.querySelector(".job");
      out.textContent = "queuing…";
      const result = await api("POST", "/api/retention/run");
      if (result.status === 202 && result.data) { out.textContent = "job " + result.data.id + " queued"; followJob(result.data.id, out); return; }
      out.textContent = "";
      message("Not run: " + errorText(result), true);
    });
  }

  // ------------------------------------------------------------ back up now (admin; web/rest_backup.py)
  const backupRun = document.getElementById("backup-run");
  if (backupRun) {
    backupRun.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = backupRun.querySelector(".job");
      out.textContent = "queuing…";
      const result = await api("POST", "/api/backup");
      if (result.status === 202 && result.data) { out.textContent = "job " + result.data.id + " queued"; followJob(result.data.id, out); return; }
      out.textContent = "";
      message("Not backed up: " + errorText(result), true);
    });
  }

  // ------------------------------------------------------------ compress one study now (web/rest_storage.py)
  const compressStudy = document.getElementById("compress-study");
  if (compressStudy) {
    compressStudy.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = compressStudy.querySelector(".job");
      const f = compressStudy.elements;
      out.textContent = "queuing…";
      const result = await api("POST", "/api/storage/compress",
        { study_uids: [f.study.value.trim()], syntax: f.syntax.value, dry_run: f.dry_run.checked });
      if (result.status === 202 && result.data) { out.textContent = "job " + result.data.id + " queued"; followJob(result.data.id, out); return; }
      out.textContent = "";
      message("Not compressed: " + errorText(result), true);
    });
  }

  // ------------------------------------------------------------ corrections (docs/CORRECTIONS.md)
  function corrected(result, after) {
    if (result.status === 202) {
      message("Large correction: it runs as job " + result.data.job + " (see the Jobs page).", false);
    } else if (result.status === 200) {
      message("Corrected: " + result.data.instances + " file(s) rewritten.", false);
      window.location.assign(after);
    } else {
      message("Not corrected: " + errorText(result), true);
    }
  }

  document.querySelectorAll("form.correct").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const changes = {};
      form.querySelectorAll("input[name]").forEach(function (input) {
        if (input.value !== input.dataset.old) changes[input.name] = input.value;
      });
      if (Object.keys(changes).length === 0) { message("Nothing was changed.", true); return; }
      const result = await api("POST", form.dataset.modify, { changes: changes });
      let after = window.location.href;
      if (result.status === 200 && form.dataset.what === "patient") {
        after = "/ui/patient?id=" + encodeURIComponent(result.data.target);
      }
      corrected(result, after);
    });
  });

  document.querySelectorAll("form.merge").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const source = form.elements.source.value;
      if (!window.confirm("Merge patient " + source + " into " + form.dataset.target + "? This cannot be undone.")) return;
      corrected(await api("POST", "/api/patients/merge", { source: source, target: form.dataset.target }),
        window.location.href);
    });
  });

  document.querySelectorAll("form.move-series").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const study = form.elements.study.value.trim();
      const result = await api("POST", form.dataset.move, { study: study || null });
      const target = result.status === 200 ? result.data.new_values.StudyInstanceUID : study;
      corrected(result, "/ui/studies/" + encodeURIComponent(target));
    });
  });
})();
