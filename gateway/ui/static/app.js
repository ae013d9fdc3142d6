// The upload page: tus-js-client (window.tus, static/tus.min.js) sends the picked files to
// the gateway's tus endpoint, named by config.json beside the page. No inline code: the
// page runs under a CSP without 'unsafe-inline'. Text goes in with textContent only.
"use strict";

(function () {
  const TOKEN_ITEM = "gateway-ui-token"; // sessionStorage: this tab only
  const URL_PREFIX = "gateway-ui::"; // localStorage: unfinished uploads' addresses
  const PARALLEL = 3; // files sent at once
  const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
  const MANIFEST_TRIES = 5;

  const $ = (id) => document.getElementById(id);
  const rows = [];
  let config = null;
  let nextId = 0;

  // -- the key ---------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_ITEM) || "";
  }

  function showKeyState() {
    const has = token() !== "";
    $("key-state").textContent = has
      ? "A key is set for this tab."
      : "No key yet: enter an API key to upload.";
    $("forget").hidden = !has;
    refreshButtons();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // never submitted anywhere (form-action 'none')
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_ITEM, value);
    $("token").value = "";
    showKeyState();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_ITEM);
    showKeyState();
  });

  // -- resuming across reloads ------------------------------------------------------------

  // The fingerprint names a file without its name: a digest of what identifies it (name,
  // path, size, date, endpoint), so localStorage holds no file names (which may name a
  // patient). SHA-256 where the page is a secure context (https, localhost), else FNV-1a.
  async function fingerprint(file, options) {
    const parts = [file.name, file.webkitRelativePath || "", file.type, file.size,
      file.lastModified, options.endpoint].join("\u0000");
    const bytes = new TextEncoder().encode(parts);
    if (window.crypto && crypto.subtle) {
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
      return "sha256-" + hex(digest);
    }
    return "fnv-" + fnv1a(bytes, 0x811c9dc5) + fnv1a(bytes, 0x01000193);
  }

  function fnv1a(bytes, seed) {
    let h = seed >>> 0;
    for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
    return h.toString(16).padStart(8, "0");
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // tus-js-client's URL storage interface, keeping the upload's address, size and creation
  // time only: its default storage would keep the metadata (the file name) too.
  const urlStorage = {
    _entries(prefix) {
      const found = [];
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (!key || !key.startsWith(prefix)) continue;
        try {
          const entry = JSON.parse(localStorage.getItem(key));
          entry.urlStorageKey = key;
          found.push(entry);
        } catch (_) {
          localStorage.removeItem(key);
        }
      }
      return found;
    },
    findAllUploads() {
      return Promise.resolve(this._entries(URL_PREFIX));
    },
    findUploadsByFingerprint(fp) {
      return Promise.resolve(this._entries(URL_PREFIX + fp + "::"));
    },
    removeUpload(key) {
      localStorage.removeItem(key);
      return Promise.resolve();
    },
    addUpload(fp, upload) {
      const key = URL_PREFIX + fp + "::" + Math.random().toString(36).slice(2);
      const entry = { size: upload.size, creationTime: upload.creationTime,
        uploadUrl: upload.uploadUrl };
      localStorage.setItem(key, JSON.stringify(entry));
      return Promise.resolve(key);
    },
  };

  // -- the list ---------------------------------------------------------------------------

  function addFiles(files) {
    for (const file of files) {
      const row = { id: nextId++, file, name: file.webkitRelativePath || file.name,
        sent: 0, state: "ready", upload: null, el: null };
      row.el = buildRow(row);
      rows.push(row);
      showRow(row);
      $("rows").appendChild(row.el.tr);
    }
    refresh();
  }

  function cell(tr, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function buildRow(row) {
    const tr = document.createElement("tr");
    tr.id = "row-" + row.id;
    cell(tr, "name").textContent = row.name;
    cell(tr, "size").textContent = formatBytes(row.file.size);
    const progressCell = cell(tr, "progress");
    const bar = document.createElement("progress");
    bar.max = Math.max(row.file.size, 1);
    bar.value = 0;
    const pct = document.createElement("span");
    pct.className = "pct";
    progressCell.append(bar, pct);
    const stateCell = cell(tr, "state");
    const state = document.createElement("div");
    state.className = "state-text";
    const result = document.createElement("div");
    result.className = "result";
    stateCell.append(state, result);
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "toggle";
    toggle.addEventListener("click", () => toggleRow(row));
    cell(tr, "act").appendChild(toggle);
    return { tr, bar, pct, state, result, toggle };
  }

  function showRow(row, note) {
    const size = row.file.size;
    row.el.bar.value = row.sent;
    const pct = size === 0 ? (row.state === "done" ? 100 : 0) : Math.floor((row.sent / size) * 100);
    row.el.pct.textContent = pct + "%";
    row.el.tr.dataset.state = row.state;
    const labels = { ready: "Ready", queued: "Waiting", uploading: "Uploading",
      paused: "Paused", failed: "Failed", verifying: "Fetching the manifest", done: "Done" };
    row.el.state.textContent = labels[row.state] + (note ? ": " + note : "");
    const toggles = { uploading: "Pause", queued: "Pause", paused: "Resume", failed: "Retry" };
    row.el.toggle.textContent = toggles[row.state] || "";
    row.el.toggle.hidden = !(row.state in toggles);
  }

  function refresh() {
    let total = 0;
    let sent = 0;
    let done = 0;
    for (const row of rows) {
      total += row.file.size;
      sent += row.sent;
      if (row.state === "done") done += 1;
    }
    $("total-bar").max = Math.max(total, 1);
    $("total-bar").value = sent;
    $("total-text").textContent = rows.length === 0
      ? "No files picked."
      : `${done} of ${rows.length} files done · ${total ? Math.floor((sent / total) * 100) : 100}%` +
        ` · ${formatBytes(sent)} of ${formatBytes(total)}`;
    refreshButtons();
  }

  function refreshButtons() {
    const has = (...states) => rows.some((r) => states.includes(r.state));
    $("start").disabled = !(token() && config && has("ready"));
    $("pause-all").disabled = !has("uploading", "queued");
    $("resume-all").disabled = !(token() && has("paused", "failed"));
    $("clear").disabled = !has("done");
  }

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function message(text) {
    $("message").textContent = text;
    $("message").hidden = !text;
  }

  // -- uploading --------------------------------------------------------------------------

  function queue(row) {
    row.state = "queued";
    showRow(row);
    pump();
  }

  function pump() {
    let running = rows.filter((r) => r.state === "uploading").length;
    for (const row of rows) {
      if (running >= PARALLEL) break;
      if (row.state !== "queued") continue;
      running += 1;
      send(row);
    }
    refresh();
  }

  function send(row) {
    row.state = "uploading";
    showRow(row);
    if (!row.upload) row.upload = newUpload(row);
    const upload = row.upload;
    if (upload.url) {
      upload.start(); // a paused or failed upload: HEAD, then on from the server's offset
      return;
    }
    upload.findPreviousUploads().then((previous) => {
      if (previous.length > 0) {
        upload.resumeFromPreviousUpload(previous[0]);
        showRow(row, "resuming an earlier upload");
      }
      upload.start();
    });
  }

  function newUpload(row) {
    return new tus.Upload(row.file, {
      endpoint: config.endpoint,
      chunkSize: config.chunkSize || Infinity,
      retryDelays: RETRY_DELAYS,
      metadata: { filename: row.name, filetype: row.file.type || "application/octet-stream" },
      fingerprint,
      urlStorage,
      removeFingerprintOnSuccess: true,
      // The key is read for every request, so a key entered again takes effect at once.
      onBeforeRequest(req) {
        req.setHeader("Authorization", "Bearer " + token());
      },
      onShouldRetry(err) {
        const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
        if (!navigator.onLine) return false; // the "online" event resumes it
        return status === 0 || status >= 500 || [409, 423, 429].includes(status);
      },
      onProgress(bytesSent) {
        row.sent = bytesSent;
        showRow(row);
        refresh();
      },
      onSuccess() {
        row.sent = row.file.size;
        row.state = "verifying";
        showRow(row);
        pump();
        fetchManifest(row);
      },
      onError(err) {
        row.state = "failed";
        row.network = !err.originalResponse; // no answer at all: retried when back online
        showRow(row, describe(err));
        pump();
      },
    });
  }

  function describe(err) {
    const response = err.originalResponse;
    if (!response) return navigator.onLine ? "no answer from the gateway" : "offline";
    const status = response.getStatus();
    if (status === 401) return "the key was refused (401)";
    if (status === 403) return "this key may not upload (403)";
    if (status === 413) return "too large for the gateway (413)";
    try {
      const problem = JSON.parse(response.getBody());
      if (problem && problem.detail) return `${problem.detail} (${status})`;
    } catch (_) {
      // not a problem document
    }
    return "the gateway answered " + status;
  }

  function toggleRow(row) {
    if (row.state === "uploading") {
      row.upload.abort(); // keeps the upload on the server; Resume goes on from its offset
      row.state = "paused";
      showRow(row);
      pump();
    } else if (row.state === "queued") {
      row.state = "paused";
      showRow(row);
      refresh();
    } else if (row.state === "paused" || row.state === "failed") {
      queue(row);
    }
  }

  // -- the manifest -----------------------------------------------------------------------

  async function fetchManifest(row) {
    const url = row.upload.url + "/manifest";
    for (let attempt = 1; ; attempt++) {
      try {
        const headers = { Authorization: "Bearer " + token() };
        const json = await fetch(url, { headers: { ...headers, Accept: "application/json" },
          credentials: "omit", cache: "no-store" });
        if (!json.ok) throw new Error("the gateway answered " + json.status);
        const manifest = await json.json();
        const jws = await fetch(url, { headers: { ...headers, Accept: "application/jose" },
          credentials: "omit", cache: "no-store" });
        if (!jws.ok) throw new Error("the gateway answered " + jws.status);
        showDone(row, manifest, await jws.blob());
        return;
      } catch (err) {
        if (attempt >= MANIFEST_TRIES) {
          row.state = "done";
          showRow(row, "uploaded; the manifest could not be fetched (" + err.message + ")");
          refresh();
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      }
    }
  }

  function showDone(row, manifest, jws) {
    row.state = "done";
    showRow(row);
    const id = manifest.upload && manifest.upload.id;
    const sha = manifest.plaintext && manifest.plaintext.sha256;
    const line = document.createElement("div");
    line.className = "sha256";
    const label = document.createElement("span");
    label.textContent = "SHA-256 ";
    const code = document.createElement("code");
    code.textContent = sha || "not in this manifest";
    line.append(label, code);
    const link = document.createElement("a");
    link.className = "manifest";
    link.href = URL.createObjectURL(jws);
    link.download = (id || "upload") + ".manifest.jws";
    link.textContent = "signed manifest";
    const where = document.createElement("div");
    where.className = "upload-url";
    where.append(link, document.createTextNode(" · " + row.upload.url));
    row.el.result.replaceChildren(line, where);
    refresh();
  }

  // -- the page ---------------------------------------------------------------------------

  $("files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  $("folder").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  $("start").addEventListener("click", () => {
    for (const row of rows) if (row.state === "ready") queue(row);
  });
  $("pause-all").addEventListener("click", () => {
    for (const row of rows) if (row.state === "uploading" || row.state === "queued") toggleRow(row);
  });
  $("resume-all").addEventListener("click", () => {
    for (const row of rows) if (row.state === "paused" || row.state === "failed") queue(row);
  });
  $("clear").addEventListener("click", () => {
    for (const row of rows.filter((r) => r.state === "done")) {
      row.el.tr.remove();
      rows.splice(rows.indexOf(row), 1);
    }
    refresh();
  });
  // Back online: what failed for want of a network goes on by itself.
  window.addEventListener("online", () => {
    message("");
    for (const row of rows) if (row.state === "failed" && row.network) queue(row);
  });
  window.addEventListener("offline", () => {
    message("The network is gone: uploads go on by themselves when it is back.");
  });

  async function start() {
    showKeyState();
    if (!window.tus || !tus.isSupported) {
      message("This browser cannot run the upload page (tus-js-client is not supported).");
      return;
    }
    try {
      const response = await fetch("config.json", { credentials: "omit", cache: "no-store" });
      if (!response.ok) throw new Error("config.json: " + response.status);
      config = await response.json();
    } catch (err) {
      message("The page's settings could not be read: " + err.message);
      return;
    }
    document.body.dataset.ready = "true";
    refresh();
  }

  start();
})();
