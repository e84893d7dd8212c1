// The dashboard's few interactions: choosing columns, picking rows to compare, live refresh,
// promote/deploy through the Kubernetes API (the page's own origin, under the user's
// credentials), and the inference form. No framework, no CDN.
"use strict";

const ROOT = document.body.dataset.root || "./";
const K8S = "/apis/cdl.dev/v1alpha1";

function kube(method, path, body) {
  const headers = {"Accept": "application/json", "X-Cdl-Dashboard": "1"};
  if (body !== undefined) headers["Content-Type"] = "application/merge-patch+json";
  return fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                      credentials: "same-origin"}).then(async (resp) => {
    const text = await resp.text();
    let data = null;
    try { data = JSON.parse(text); } catch (e) { data = null; }
    if (!resp.ok) {
      const why = (data && (data.message || data.error)) || text.slice(0, 200) || resp.statusText;
      throw new Error(`HTTP ${resp.status}: ${why}`);
    }
    return data;
  });
}

function columns() {
  const form = document.getElementById("query-form");
  document.querySelectorAll(".col-toggle").forEach((box) => box.addEventListener("change", () => {
    const shown = [...document.querySelectorAll(".col-toggle:checked")].map((b) => b.value);
    document.querySelectorAll("[data-col]").forEach((el) => { el.hidden = !shown.includes(el.dataset.col); });
    if (form) form.elements.cols.value = shown.join(",");
    const url = new URL(window.location.href);
    url.searchParams.set("cols", shown.join(","));
    window.history.replaceState(null, "", url);
  }));
}

function picking() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  form.addEventListener("submit", (ev) => {
    const picked = [...form.querySelectorAll(".pick:checked")].map((b) => b.value);
    if (picked.length < 2) {
      ev.preventDefault();
      alert("Select at least two rows to compare.");
      return;
    }
    document.getElementById("compare-trials").value = picked.join(",");
  });
}

function live() {
  const el = document.querySelector("[data-live]");
  if (el) setTimeout(() => window.location.reload(), Number(el.dataset.live) * 1000);
}

function actions() {
  const box = document.getElementById("actions");
  if (!box) return;
  const ns = box.dataset.namespace, name = box.dataset.name;
  const out = document.getElementById("action-result");
  const say = (text, bad) => { out.textContent = text; out.className = bad ? "error" : "ok"; };
  document.getElementById("promote").addEventListener("click", async () => {
    const stage = document.getElementById("promote-stage").value;
    try {
      const mv = await kube("PATCH", `${K8S}/namespaces/${ns}/modelversions/${name}`, {spec: {stage}});
      say(`ModelVersion ${ns}/${name}: spec.stage is now ${mv.spec.stage}; the operator applies the promotion ` +
          `(status.stage ${(mv.status || {}).stage || "pending"}).`, false);
    } catch (err) { say(`Promotion not made: ${err.message}`, true); }
  });
  const target = document.getElementById("deploy-target");
  kube("GET", `${K8S}/namespaces/${ns}/deployments`).then((list) => {
    target.innerHTML = "";
    for (const d of list.items || []) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = d.metadata.name;
      target.appendChild(opt);
    }
    if (!target.options.length) target.innerHTML = '<option value="">(no Deployment in this namespace)</option>';
  }).catch((err) => { target.innerHTML = `<option value="">(cannot list: ${err.message})</option>`; });
  document.getElementById("deploy").addEventListener("click", async () => {
    const dep = target.value;
    if (!dep) { say("Choose a Deployment first.", true); return; }
    try {
      await kube("PATCH", `${K8S}/namespaces/${ns}/deployments/${dep}`,
                 {spec: {modelVersionRef: {name}, model: null}});
      say(`Deployment ${ns}/${dep} now serves ${name}.`, false);
    } catch (err) { say(`Deployment not changed: ${err.message}`, true); }
  });
}

function csvRow(text) {
  const cells = [];
  let cur = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cur += '"'; i++; } else if (c === '"') quoted = false; else cur += c;
    } else if (c === '"') quoted = true; else if (c === ",") { cells.push(cur); cur = ""; } else cur += c;
  }
  cells.push(cur);
  return cells.map((v) => (v.trim() !== "" && !isNaN(Number(v)) ? Number(v) : v));
}

function inference() {
  const box = document.getElementById("inference");
  if (!box) return;
  const kind = document.getElementById("inference-kind");
  const input = document.getElementById("inference-input");
  const file = document.getElementById("inference-file");
  const out = document.getElementById("inference-result");
  kind.addEventListener("change", () => { file.hidden = kind.value !== "image"; input.hidden = kind.value === "image"; });
  document.getElementById("inference-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let payload;
    try {
      if (kind.value === "image") {
        const f = file.files[0];
        if (!f) throw new Error("choose an image file");
        const bytes = new Uint8Array(await f.arrayBuffer());
        let bin = "";
        bytes.forEach((b) => { bin += String.fromCharCode(b); });
        payload = {binData: btoa(bin)};
      } else if (kind.value === "csv") {
        payload = {data: {ndarray: [csvRow(input.value)]}};
      } else if (kind.value === "json") {
        const parsed = JSON.parse(input.value);
        payload = {data: {ndarray: Array.isArray(parsed) ? parsed : [parsed]}};
      } else {
        payload = {data: {ndarray: [input.value]}};
      }
    } catch (err) { out.textContent = `Input not sent: ${err.message}`; out.className = "error"; return; }
    out.textContent = "…";
    const url = `${ROOT}v1/namespaces/${box.dataset.namespace}/deployments/${box.dataset.name}/predictions`;
    try {
      const resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json",
                                                              "X-Cdl-Dashboard": "1"}, body: JSON.stringify(payload)});
      const text = await resp.text();
      out.className = resp.ok ? "ok" : "error";
      try { out.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { out.textContent = text; }
    } catch (err) { out.textContent = `Request failed: ${err.message}`; out.className = "error"; }
  });
}

document.addEventListener("DOMContentLoaded", () => { columns(); picking(); live(); actions(); inference(); });
