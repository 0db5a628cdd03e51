// The review page (tools/review_labels.py inlines this file). Data comes from the JSON block
// above; no network. Every value from the data is put in the page with textContent or as an
// attribute, never as HTML, so a key or a source path cannot inject markup.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("review-data").textContent);
  const R = D.rows, C = D.classes, N = R.index.length;
  const STORE = "limit-review:" + D.run_id;
  const CARD_W = 158, CARD_H = 220;            // card size + gap (review.css .card)
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const pred = (i) => (R.pp[i] >= 0 ? R.pp[i] : R.cp[i]);   // the label the scorer suggests

  // ---- decisions: {index: {d: accept|relabel|keep|drop, l: label or -1}}, saved on change ----
  let decisions = load();
  const undoStack = [];
  function load() {
    try { return JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (e) { return {}; }
  }
  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(decisions)); }
    catch (e) { toast("could not save decisions in this browser: " + e.message); }
  }
  function setDecision(i, d, label) {
    const idx = R.index[i], prev = decisions[idx] || null;
    undoStack.push({ i: i, prev: prev });
    if (d === null) delete decisions[idx];
    else decisions[idx] = { d: d, l: label };
    save();
  }
  function decide(i, d, label) {
    if (i < 0) return;
    if (d === "relabel" && label === R.given[i]) d = "keep";   // the given class is a keep
    if (d === "accept" && pred(i) === R.given[i]) d = "keep";
    if (d === "accept") label = pred(i);
    if (d === "keep") label = R.given[i];
    if (d === "drop") label = -1;
    setDecision(i, d, label);
    const pos = view.indexOf(i);
    move(pos >= 0 && pos + 1 < view.length ? view[pos + 1] : i);   // on to the next sample
  }
  function undo() {
    const u = undoStack.pop();
    if (!u) { toast("nothing to undo"); return; }
    const idx = R.index[u.i];
    if (u.prev) decisions[idx] = u.prev; else delete decisions[idx];
    save();
    move(u.i);
  }
  function exportCsv() {
    // a text cell a spreadsheet would run (= + - @ tab CR, after any quotes) gets a leading ',
    // which pipeline/fixes.py takes off again (pipeline/csv_cells.py, the same rule)
    const neutral = (s) => (/^'*[=+\-@\t\r]/.test(s) ? "'" + s : s);
    const q = (s) => { s = neutral(String(s)); return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
    const lines = ["key,index,given,decision,new_label"];
    for (let i = 0; i < N; i++) {
      const v = decisions[R.index[i]];
      if (!v) continue;
      lines.push([q(R.key[i]), R.index[i], q(C[R.given[i]]), v.d, v.l >= 0 ? q(C[v.l]) : ""].join(","));
    }
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "label_fixes-" + D.run_id.replace(/[^\w.-]+/g, "_") + ".csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    toast((lines.length - 1) + " decisions exported");
  }

  // ---- filters and the view (row positions shown, in order) ----
  let view = [], sel = -1;
  function fillSelect(s, allText) {
    s.appendChild(new Option(allText, ""));
    C.forEach((c, k) => s.appendChild(new Option(k + ": " + c, String(k))));
  }
  function applyFilters() {
    const g = $("f-given").value, p = $("f-pred").value, dis = $("f-disagree").checked;
    const lo = parseFloat($("f-min").value), hi = parseFloat($("f-max").value), dec = $("f-decided").value;
    const out = [];
    for (let i = 0; i < N; i++) {
      if (g !== "" && R.given[i] !== +g) continue;
      if (p !== "" && pred(i) !== +p) continue;
      if (dis && pred(i) === R.given[i]) continue;
      if (!isNaN(lo) && R.score[i] < lo) continue;
      if (!isNaN(hi) && R.score[i] > hi) continue;
      if (dec && (dec === "yes") !== (R.index[i] in decisions)) continue;
      out.push(i);
    }
    const s = $("f-sort").value;
    const by = { rank: (a, b) => R.rank[a] - R.rank[b], "-rank": (a, b) => R.rank[b] - R.rank[a],
                 given: (a, b) => R.given[a] - R.given[b] || R.rank[a] - R.rank[b],
                 pred: (a, b) => pred(a) - pred(b) || R.rank[a] - R.rank[b] }[s];
    out.sort(by);
    view = out;
    $("count").textContent = view.length + " of " + N + " shown · " + Object.keys(decisions).length + " decided";
    if (view.indexOf(sel) < 0) sel = view.length ? view[0] : -1;
    layout();
    showDetail();
  }

  // ---- the virtual grid: only the cards in sight exist (20,000 suspects stay smooth) ----
  const grid = $("grid"), spacer = $("spacer");
  let cols = 1, drawn = "";
  function layout() {
    cols = Math.max(1, Math.floor((grid.clientWidth - 8) / CARD_W));
    spacer.style.height = Math.ceil(view.length / cols) * CARD_H + 8 + "px";
    drawn = "";
    draw();
  }
  function draw() {
    const top = grid.scrollTop, h = grid.clientHeight || 800;
    const r0 = Math.max(0, Math.floor(top / CARD_H) - 1), r1 = Math.ceil((top + h) / CARD_H) + 1;
    const key = r0 + ":" + r1 + ":" + cols;
    if (key === drawn) return;
    drawn = key;
    const frag = document.createDocumentFragment();
    for (let p = r0 * cols; p < Math.min(view.length, r1 * cols); p++) frag.appendChild(card(view[p], p));
    spacer.replaceChildren(frag);
  }
  function redraw() { drawn = ""; draw(); showDetail(); $("count").textContent = view.length + " of " + N + " shown · " + Object.keys(decisions).length + " decided"; }
  function card(i, p) {
    const v = decisions[R.index[i]], c = el("div", "card" + (i === sel ? " sel" : "") + (v ? " d-" + v.d : ""));
    c.style.left = 4 + (p % cols) * CARD_W + "px";
    c.style.top = 4 + Math.floor(p / cols) * CARD_H + "px";
    c.dataset.i = i;
    c.title = R.source[i] || R.key[i];
    const img = el("img");
    img.loading = "lazy";
    img.alt = R.key[i];
    if (R.thumb[i]) img.src = R.thumb[i];
    c.appendChild(img);
    const pr = pred(i), dis = pr !== R.given[i];
    c.appendChild(el("div", "l", "given: " + C[R.given[i]]));
    c.appendChild(el("div", "l" + (dis ? " dis" : ""), "pred: " + (pr >= 0 ? C[pr] : "?") +
      (R.pp[i] >= 0 ? " · cls: " + C[R.cp[i]] : "")));
    c.appendChild(el("div", "l", "#" + R.rank[i] + " · score " + R.score[i]));
    c.appendChild(el("div", "l key", R.key[i]));
    c.appendChild(el("div", "l badge", v ? label(v) : "\u00a0"));
    const b = el("div", "btns");
    [["A", "accept", "accept the predicted label (A)"], ["K", "keep", "keep the given label (K)"],
     ["D", "drop", "drop from training (D)"]].forEach(([t, d, tip]) => {
      const x = el("button", "", t);
      x.title = tip;
      x.dataset.d = d;
      b.appendChild(x);
    });
    c.appendChild(b);
    return c;
  }
  function label(v) {
    return v.d === "drop" ? "✗ drop" : v.d === "keep" ? "= keep " + C[v.l] : "→ " + C[v.l] + " (" + v.d + ")";
  }
  grid.addEventListener("scroll", () => requestAnimationFrame(draw));
  window.addEventListener("resize", () => { layout(); });
  spacer.addEventListener("click", (e) => {
    const c = e.target.closest(".card");
    if (!c) return;
    const i = +c.dataset.i;
    if (e.target.dataset.d) { sel = i; decide(i, e.target.dataset.d, -1); }
    else move(i);
    grid.focus();
  });

  // ---- selection and the detail panel ----
  function move(i) {
    sel = i;
    const p = view.indexOf(i);
    if (p >= 0) {                                // scroll the card into sight
      const y = 4 + Math.floor(p / cols) * CARD_H;
      if (y < grid.scrollTop) grid.scrollTop = y;
      else if (y + CARD_H > grid.scrollTop + grid.clientHeight) grid.scrollTop = y + CARD_H - grid.clientHeight;
    }
    redraw();
  }
  function showDetail() {
    const box = $("detail");
    box.replaceChildren();
    if (sel < 0) { box.appendChild(el("p", "", "No sample matches the filters.")); return; }
    const i = sel, v = decisions[R.index[i]];
    box.appendChild(el("h3", "", "Rank " + R.rank[i] + " of " + D.n_scored));
    const img = el("img");
    if (R.thumb[i]) img.src = R.thumb[i];
    img.alt = R.key[i];
    box.appendChild(img);
    const dl = el("dl");
    const row = (k, t) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", t)); };
    row("given", R.given[i] + ": " + C[R.given[i]]);
    row("predictor", R.pp[i] >= 0 ? R.pp[i] + ": " + C[R.pp[i]] : "(none: not a LIMIT run)");
    row("classifier", R.cp[i] + ": " + C[R.cp[i]]);
    row("score", String(R.score[i]));
    row("key", R.key[i]);
    row("index", String(R.index[i]));
    row("source", R.source[i] || "(not recorded)");
    row("shard", R.shard[i]);
    row("decision", v ? label(v) : "none yet");
    box.appendChild(dl);
    const acts = el("div", "acts");
    [["Accept predicted (A)", "accept"], ["Keep given (K)", "keep"], ["Drop (D)", "drop"], ["Clear (X)", "clear"]].forEach(([t, d]) => {
      const b = el("button", "", t);
      b.addEventListener("click", () => { d === "clear" ? clearOne(i) : decide(i, d, -1); grid.focus(); });
      acts.appendChild(b);
    });
    box.appendChild(acts);
    const pick = el("select");
    pick.id = "cls-pick";
    pick.size = Math.min(8, C.length + 1);
    pick.appendChild(new Option("choose another class… (C, then type, Enter)", ""));
    C.forEach((c, k) => pick.appendChild(new Option(k + ": " + c, String(k))));
    const choose = () => { if (pick.value !== "") { decide(i, "relabel", +pick.value); grid.focus(); } };
    pick.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); choose(); }
      if (e.key === "Escape") grid.focus();
      e.stopPropagation();
    });
    pick.addEventListener("click", (e) => { if (e.target.tagName === "OPTION") choose(); });
    box.appendChild(pick);
  }
  function clearOne(i) { setDecision(i, null, -1); redraw(); }

  // ---- keys ----
  document.addEventListener("keydown", (e) => {
    const t = e.target.tagName;
    if (e.key === "Escape") { $("help").hidden = true; grid.focus(); return; }
    if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA" || e.altKey || e.metaKey) return;
    if (e.ctrlKey && e.key.toLowerCase() !== "z") return;
    const p = view.indexOf(sel), rows = Math.max(1, Math.floor(grid.clientHeight / CARD_H));
    const go = (q) => { if (view.length) move(view[Math.max(0, Math.min(view.length - 1, q))]); };
    const k = e.key;
    const acts = {
      ArrowRight: () => go(p + 1), ArrowLeft: () => go(p - 1), ArrowDown: () => go(p + cols), ArrowUp: () => go(p - cols),
      PageDown: () => go(p + cols * rows), PageUp: () => go(p - cols * rows), Home: () => go(0), End: () => go(view.length - 1),
      a: () => decide(sel, "accept", -1), Enter: () => decide(sel, "accept", -1), k: () => decide(sel, "keep", -1),
      d: () => decide(sel, "drop", -1), Delete: () => decide(sel, "drop", -1), x: () => sel >= 0 && clearOne(sel),
      u: undo, z: undo, c: () => { const s = $("cls-pick"); if (s) s.focus(); },
      "?": () => { $("help").hidden = !$("help").hidden; }, h: () => { $("help").hidden = !$("help").hidden; },
    };
    const f = acts[k.length === 1 ? k.toLowerCase() : k];
    if (f && !(k.toLowerCase() === "z" && !e.ctrlKey)) { e.preventDefault(); f(); return; }
    if (/^[0-9]$/.test(k) && +k < C.length && sel >= 0) { e.preventDefault(); decide(sel, "relabel", +k); }
  });

  // ---- per-class summary and the noise matrix ----
  function classTable() {
    const n = C.length, sus = new Array(n).fill(0), asPred = new Array(n).fill(0), dec = new Array(n).fill(0);
    for (let i = 0; i < N; i++) {
      sus[R.given[i]]++;
      if (pred(i) >= 0) asPred[pred(i)]++;
      if (R.index[i] in decisions) dec[R.given[i]]++;
    }
    const t = el("table", "t"), h = el("tr");
    ["class", "suspects", "predicted as", "est. wrong", "noise rate"].forEach((x) => h.appendChild(el("th", "", x)));
    t.appendChild(h);
    const wrong = D.noise.wrong_by_given, rate = D.noise.noise_rate;
    C.forEach((c, k) => {
      const r = el("tr", "click");
      [k + ": " + c, sus[k], asPred[k], wrong[k], rate[k] === null ? "–" : rate[k].toFixed(2)].forEach((x) => r.appendChild(el("td", "", String(x))));
      r.title = "show suspects given " + c;
      r.addEventListener("click", () => { $("f-given").value = String(k); applyFilters(); grid.focus(); });
      t.appendChild(r);
    });
    const s = D.summary || {};
    const box = $("classes");
    box.appendChild(t);
    box.appendChild(el("p", "", "est. wrong: given labels the " + D.noise.proxy + " disagrees with, over all " + D.n_scored +
      " scored " + (D.noise.split || "") + " samples" + (s.n_wrong != null ? "; known wrong: " + s.n_wrong +
      " (ROC AUC " + (s.roc_auc != null ? s.roc_auc.toFixed(3) : "–") + ")" : "") + "."));
  }
  function heatmap(title, m, rate) {
    const wrap = el("div");
    wrap.appendChild(el("div", "", title));
    const t = el("table", "hm"), h = el("tr");
    h.appendChild(el("th", "", "clean\\given"));
    C.forEach((c, j) => { const x = el("th", "", String(j)); x.title = c; h.appendChild(x); });
    h.appendChild(el("th", "", "rate"));
    t.appendChild(h);
    m.forEach((row, i) => {
      const r = el("tr");
      const th = el("th", "", String(i));
      th.title = C[i];
      r.appendChild(th);
      row.forEach((v, j) => {
        const d = el("td", "", v === null ? "" : Math.round(v * 100));
        d.title = C[i] + " → " + C[j] + ": " + (v === null ? "not estimated" : v.toFixed(3));
        const a = v === null ? 0 : v;
        d.style.background = "rgba(" + (i === j ? "25,103,210," : "197,34,31,") + Math.min(1, a * (i === j ? 1 : 2.5)).toFixed(3) + ")";
        d.style.color = a > 0.45 ? "#fff" : "#222";
        r.appendChild(d);
      });
      r.appendChild(el("td", "", rate[i] === null ? "–" : rate[i].toFixed(2)));
      t.appendChild(r);
    });
    wrap.appendChild(t);
    return wrap;
  }
  function noisePanel() {
    const box = $("noise"), z = D.noise;
    box.appendChild(heatmap("Estimated P(given | clean), %: the " + z.proxy + "'s label as the clean one", z.estimated, z.noise_rate));
    if (z.true) box.appendChild(heatmap("True (clean labels known), %; mean abs. error " + z.mae.toFixed(4), z.true, z.true_noise_rate));
    const top = z.pairs.slice(0, 5).map((p) => C[p[0]] + "→" + C[p[1]] + " " + (p[2] * 100).toFixed(1) + "%");
    box.appendChild(el("p", "", "Largest flips: " + (top.join(", ") || "none") + ". " + z.calibration + ". Also noise_matrix.png."));
  }

  let toastTimer = 0;
  function toast(msg) {
    let t = document.querySelector(".toast");
    if (!t) { t = el("div", "toast"); document.body.appendChild(t); }
    t.textContent = msg;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.remove(), 2500);
  }

  // ---- start ----
  $("title").textContent = "Label review: " + D.run + " (" + N + " suspects)";
  fillSelect($("f-given"), "any");
  fillSelect($("f-pred"), "any");
  ["f-given", "f-pred", "f-disagree", "f-min", "f-max", "f-decided", "f-sort"].forEach((id) => $(id).addEventListener("change", applyFilters));
  ["f-min", "f-max"].forEach((id) => $(id).addEventListener("input", applyFilters));
  $("b-export").addEventListener("click", exportCsv);
  $("b-undo").addEventListener("click", () => { undo(); grid.focus(); });
  $("b-help").addEventListener("click", () => { $("help").hidden = false; });
  $("b-close").addEventListener("click", () => { $("help").hidden = true; grid.focus(); });
  $("b-clear").addEventListener("click", () => {
    if (confirm("Clear all " + Object.keys(decisions).length + " decisions of this run?")) {
      decisions = {}; undoStack.length = 0; save(); applyFilters();
    }
  });
  classTable();
  noisePanel();
  applyFilters();
  grid.focus();
  // for tests and scripts: the ready time, and a body attribute a selector can wait for
  window.review = { ready: performance.now(), decisions: () => decisions, view: () => view, selected: () => sel };
  document.body.dataset.ready = "1";
})();
