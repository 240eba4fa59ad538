"use strict";
// saelab explorer: index sorting/search/filters/paging, token colouring, live tools (server mode only).
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function shown(t) { return t.replace(/\n/g, "⏎\n"); }
function fmt(v) { return v === 0 ? "0" : (Math.abs(v) >= 0.01 && Math.abs(v) < 1e4 ? v.toFixed(3) : v.toExponential(2)); }
function tokenSpans(tokens, acts, scale, maxIndex) {
  return tokens.map((t, i) => {
    const a = acts[i], alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
    const cls = i === maxIndex ? "tok max" : "tok";
    return `<span class="${cls}" style="background: rgba(255, 120, 0, ${alpha.toFixed(3)})" title="${a}">${esc(shown(t))}</span>`;
  }).join("");
}
function exampleHTML(e, scale) {
  return `<div class="example"><span class="value">${e[3].toFixed(3)}</span>${tokenSpans(e[0], e[1], scale, e[2])}</div>`;
}
function setupExamples() {
  const node = document.getElementById("example-data");
  if (!node) return;
  const data = JSON.parse(node.textContent);
  if (data.top.length) document.getElementById("top-examples").innerHTML = data.top.map(e => exampleHTML(e, data.scale)).join("");
  document.getElementById("quantile-examples").innerHTML = data.quantiles.map(([band, examples]) =>
    `<h3 class="muted">quantile band ${band + 1} of ${data.bands}${band + 1 === data.bands ? " (highest)" : ""}</h3>` +
    examples.map(e => exampleHTML(e, data.scale)).join("")).join("");
}
function setupIndex() {
  const dataNode = document.getElementById("latent-data");
  if (!dataNode) return;
  const cfg = JSON.parse(dataNode.textContent);
  const rows = cfg.rows, body = document.getElementById("latent-rows"), count = document.getElementById("count");
  const search = document.getElementById("search"), info = document.getElementById("page-info");
  const hideDead = document.getElementById("hide-dead"), hideDense = document.getElementById("hide-dense");
  const buttons = {first: "page-first", prev: "page-prev", next: "page-next", last: "page-last"};
  Object.keys(buttons).forEach(k => { buttons[k] = document.getElementById(buttons[k]); });
  const isDead = r => r[1] === 0, isDense = r => r[1] > cfg.dense_threshold;
  let key = "frequency", descending = true, page = 0, hits = [];
  const columns = {latent: 0, frequency: 1, max_activation: 2, mean_activation: 3};
  function filter() {  // search, dead/dense filters and sort; back to the first page
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const found = rows.filter(r => words.every(w => String(r[0]) === w || (r[4] + " " + r[5]).toLowerCase().includes(w)));
    hits = found.filter(r => !(hideDead.checked && isDead(r)) && !(hideDense.checked && isDense(r)));
    const c = columns[key];
    hits.sort((a, b) => (descending ? b[c] - a[c] : a[c] - b[c]) || a[0] - b[0]);
    const hidden = [];
    if (hideDead.checked) hidden.push(`${found.filter(isDead).length} dead`);
    if (hideDense.checked) hidden.push(`${found.filter(isDense).length} dense`);
    count.textContent = `${hits.length} of ${rows.length} latents` + (hidden.length ? ` (hidden: ${hidden.join(", ")})` : "");
    page = 0; show();
  }
  function show() {  // the current page of hits
    const pages = Math.max(1, Math.ceil(hits.length / cfg.page_size));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * cfg.page_size, shown = hits.slice(start, start + cfg.page_size);
    info.textContent = `page ${page + 1} of ${pages}` + (shown.length ? ` (rows ${start + 1}–${start + shown.length})` : "");
    buttons.first.disabled = buttons.prev.disabled = page === 0;
    buttons.next.disabled = buttons.last.disabled = page === pages - 1;
    body.innerHTML = shown.map(r =>
      `<tr data-latent="${r[0]}"><td><a href="${cfg.href.replace("{i}", r[0])}">${r[0]}</a></td><td class="num">${fmt(r[1])}</td><td class="num">${fmt(r[2])}</td><td class="num">${fmt(r[3])}</td><td class="code">${esc(r[4])}</td><td>${esc(r[5])}</td></tr>`).join("");
  }
  document.querySelectorAll("th[data-key]").forEach(th => th.addEventListener("click", () => {
    descending = th.dataset.key === key ? !descending : th.dataset.key !== "latent";
    key = th.dataset.key; filter();
  }));
  search.addEventListener("input", filter);
  hideDead.addEventListener("change", filter);
  hideDense.addEventListener("change", filter);
  buttons.first.addEventListener("click", () => { page = 0; show(); });
  buttons.prev.addEventListener("click", () => { page -= 1; show(); });
  buttons.next.addEventListener("click", () => { page += 1; show(); });
  buttons.last.addEventListener("click", () => { page = Infinity; show(); });
  const q = new URLSearchParams(location.search).get("q");
  if (q) search.value = q;
  filter();
}
async function postJSON(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map(d => d.msg).join("; ") : data.detail;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}
function setupTools() {
  const analyze = document.getElementById("analyze-form");
  if (analyze) analyze.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = document.getElementById("analyze-out");
    out.textContent = "running…";
    try {
      const data = await postJSON("/api/analyze", {text: analyze.text.value, k: 5, include_dense: analyze.include_dense.checked});
      const dense = data.dense, verb = dense.excluded ? "left out" : "included";
      out.innerHTML = "<table><tr><th>#</th><th>token</th><th>top latents</th></tr>" + data.tokens.map(t =>
        `<tr><td>${t.position}</td><td class="code">${esc(shown(t.token))}</td><td>${t.latents.map(([i, v]) => `<a href="/latent/${i}">${i}</a> <span class="muted">${fmt(v)}</span>`).join(", ")}</td></tr>`).join("") + "</table>" +
        `<p class="muted" id="analyze-dense">Dense latents (fire on &gt; ${Number((dense.threshold * 100).toPrecision(6))}% of tokens) ${verb}: ` +
        (dense.latents.map(([i, f]) => `<a href="/latent/${i}">${i}</a> (${(f * 100).toFixed(1)}%)`).join(", ") || "none fired here") + "</p>";
    } catch (e) { out.innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
  const steer = document.getElementById("steer-form");
  if (steer) steer.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = document.getElementById("steer-out");
    out.textContent = "generating…";
    try {
      const data = await postJSON("/api/steer", {prompt: steer.prompt.value, latent: Number(steer.latent.value),
        strength: Number(steer.strength.value), mode: steer.mode.value, max_new_tokens: Number(steer.max_new_tokens.value)});
      out.innerHTML = `<div class="side"><div><h2>without steering</h2><pre>${esc(data.baseline)}</pre></div><div><h2>steered (${esc(data.mode)} latent ${data.latent} × ${data.strength})</h2><pre>${esc(data.steered)}</pre></div></div>`;
    } catch (e) { out.innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
}
document.addEventListener("DOMContentLoaded", () => { setupIndex(); setupExamples(); setupTools(); });
