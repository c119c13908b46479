// The console's page: plain JavaScript, no library. It calls the API it is served beside (POST /predict,
// POST /models/{model}/serve) and polls GET /console/pipeline every two seconds.
"use strict";

const POLL_MS = 2000;
const COLOURS = ["#2f6fde", "#d9480f", "#1a7f4b", "#7048e8", "#c2255c", "#0b7285", "#a07400", "#495057"];

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }
function fixed(x, digits) { return typeof x === "number" ? x.toFixed(digits === undefined ? 4 : digits) : "–"; }
function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : "–"; }

// The API's JSON error {"Code", "Message"} in words, else the status line.
async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  const words = body && (body.Message || body.message);
  return `HTTP ${response.status}${body && body.Code ? " " + body.Code : ""}: ${words || response.statusText || "no message"}`;
}

// --- try a photo ------------------------------------------------------------------------------------

const results = document.getElementById("results");
const drop = document.getElementById("drop");
const pick = document.getElementById("pick");
const explain = document.getElementById("explain");

function bars(predictions) {
  const list = el("ol", {class: "bars"});
  for (const p of predictions) {
    const fill = el("div", {class: "fill"});
    fill.style.width = Math.max(0, Math.min(100, 100 * p.probability)).toFixed(2) + "%";
    list.append(el("li", {class: "bar", "data-label": p.label, "data-class": p["class"],
                          "data-probability": String(p.probability), title: p["class"]},
                   el("span", {class: "label", text: p.label}),
                   el("span", {class: "track"}, fill),
                   el("span", {class: "value", text: percent(p.probability)})));
  }
  return list;
}

async function classify(file) {
  const card = el("article", {class: "card", "data-file": file.name}, el("h4", {text: file.name}));
  const photo = el("div", {class: "photo"});
  const status = el("p", {class: "muted", text: "classifying…"});
  card.append(photo, status);
  results.prepend(card);
  if (file.type.startsWith("image/")) {
    photo.append(el("img", {class: "original", alt: file.name, src: URL.createObjectURL(file)}));
  }
  const asked = explain.checked;
  let response;
  try {
    response = await fetch("/predict" + (asked ? "?explain=true" : ""), {
      method: "POST", body: file, headers: {"Content-Type": file.type || "application/x-image"}});
  } catch (error) {
    status.className = "error";
    status.textContent = "the API did not answer: " + error;
    return;
  }
  if (!response.ok) {
    status.className = "error";
    status.textContent = await failure(response);
    card.classList.add("refused");
    return;
  }
  const body = await response.json();
  const first = Array.isArray(body) ? body[0] : body;
  status.remove();
  card.append(bars(first.predictions || []));
  const explanation = first.explanation;
  if (explanation && explanation.heatmap) {
    const heat = el("img", {class: "heat", alt: `where the model looked for ${explanation.label}`,
                           src: "data:image/png;base64," + explanation.heatmap,
                           "data-width": String(explanation.width), "data-height": String(explanation.height)});
    photo.append(heat);
    card.append(el("p", {class: "muted", text: `heatmap: where the model looked for ${explanation.label}`}));
  } else if (asked) {
    card.append(el("p", {class: "muted", text: "no heatmap in the answer: this endpoint does not explain"}));
  }
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

pick.addEventListener("change", () => { classifyAll(Array.from(pick.files)); pick.value = ""; });
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyAll(Array.from(event.dataTransfer.files));
});

// --- charts: inline SVG line charts ----------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// series: [{name, points: [[x, y], ...]}]; draws axes, grid, one polyline per series and a legend.
function lineChart(target, series, yLabel, empty) {
  target.replaceChildren();
  // drawn at the size it is shown, so its text stays legible on a phone
  const width = Math.max(300, Math.round(target.getBoundingClientRect().width) || 600);
  const height = width < 500 ? 240 : 260, left = 46, right = 12, top = 12, bottom = 70;
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const longest = Math.max(0, ...series.map((s) => Math.min(s.name.length, 28)));
  const columnWidth = Math.min(185, 24 + 6.5 * longest);
  const columns = Math.max(1, Math.floor((width - left) / columnWidth));
  const points = series.flatMap((s) => s.points);
  if (points.length === 0) {
    target.append(svg("text", {x: width / 2, y: height / 2, "text-anchor": "middle"}, empty));
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const xMin = Math.min(...xs), xMax = Math.max(Math.max(...xs), xMin + 1);
  let yMin = Math.min(0, ...ys), yMax = Math.max(...ys);
  if (yMax <= yMin) yMax = yMin + 1;
  const X = (x) => left + (x - xMin) / (xMax - xMin) * (width - left - right);
  const Y = (y) => height - bottom - (y - yMin) / (yMax - yMin) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const y = yMin + (yMax - yMin) * i / 4;
    target.append(svg("line", {class: "grid", x1: left, x2: width - right, y1: Y(y), y2: Y(y)}));
    target.append(svg("text", {x: left - 6, y: Y(y) + 4, "text-anchor": "end"}, y.toFixed(2)));
  }
  for (let x = Math.ceil(xMin); x <= xMax; x++) {
    target.append(svg("text", {x: X(x), y: height - bottom + 16, "text-anchor": "middle"}, String(x)));
  }
  target.append(svg("line", {class: "axis", x1: left, x2: left, y1: top, y2: height - bottom}));
  target.append(svg("line", {class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}));
  target.append(svg("text", {x: width - right, y: height - bottom + 28, "text-anchor": "end"}, "epoch"));
  target.append(svg("text", {x: 4, y: top + 2, "dominant-baseline": "hanging"}, yLabel));
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const line = svg("polyline", {stroke: colour, "data-series": s.name,
                                  points: s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ")});
    target.append(line);
    for (const p of s.points) target.append(svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: colour}));
    const column = i % columns, row = Math.floor(i / columns);
    const lx = left + column * columnWidth, ly = height - 30 + row * 12;
    target.append(svg("rect", {x: lx, y: ly - 8, width: 10, height: 10, fill: colour}));
    target.append(svg("text", {x: lx + 14, y: ly + 1}, s.name.length > 28 ? "…" + s.name.slice(-27) : s.name));
  });
}

function curve(points, key) {
  return (points || []).filter((p) => typeof p[key] === "number").map((p) => [p.epoch, p[key]]);
}

// --- the pipeline ----------------------------------------------------------------------------------

function text(id, value) { document.getElementById(id).textContent = value; }

function stageOf(view) {
  const status = view.status || {};
  const run = status.run || {};
  const deployed = status.deployed || {};
  const endpoint = status.endpoint || {};
  if (!status.dataset && !run.dataset) return ["waiting for a dataset", ""];
  if ((run.layout_problems || []).length) return ["dataset refused", "failed"];
  for (const stage of ["tuning", "training"]) {
    if (["Failed", "Stopped"].includes(run[stage + "_status"])) return [stage + " " + run[stage + "_status"].toLowerCase(), "failed"];
  }
  if (run.training_status && run.training_status !== "Completed") return ["training", "busy"];
  if (run.tuning_status && run.tuning_status !== "Completed") return ["tuning", "busy"];
  if (run.gate && !run.gate.deploy) return ["gate refused", "failed"];
  if (deployed.deployment === "Serving" && endpoint.status === "InService") return ["deployed", "deployed"];
  if (deployed.deployment === "FailedToDeploy") return ["deployment failed", "failed"];
  if (deployed.model_name) return ["deploying", "busy"];
  return ["…", ""];
}

function renderTrials(view) {
  if (!changed("trials", view.trials)) return;
  const body = document.querySelector("#trials tbody");
  const rows = (view.trials || []).map((t) => el("tr", {"data-trial": t.name},
    el("td", {text: t.name}),
    el("td", {class: "status-" + t.status, text: t.status + (t.failure ? ": " + t.failure : "")}),
    el("td", {text: Object.entries(t.hyperparameters || {}).map(([k, v]) =>
      `${k}=${typeof v === "number" ? Number(v.toPrecision(3)) : v}`).join(" ")}),
    el("td", {class: "num", text: t.objective === null || t.objective === undefined ? "–" :
      `${t.objective_metric || "objective"} ${fixed(t.objective)}`}),
    el("td", {class: "stopped", text: t.stopped_early ? "yes" : "no"})));
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 5, class: "muted", text: "no trial yet"}))]));
  lineChart(document.getElementById("trial-chart"),
            (view.trials || []).map((t) => ({name: t.name, points: curve(t.curve, "val_acc")}))
                               .filter((s) => s.points.length), "val_acc", "no epoch has ended yet");
}

function renderTraining(view) {
  const training = view.training;
  if (!changed("training", training)) return;
  const chart = document.getElementById("training-chart");
  const rules = document.querySelector("#rules tbody");
  if (!training) {
    lineChart(chart, [], "", "the instrumented run starts when tuning ends");
    return;
  }
  lineChart(chart, ["train_loss", "val_loss", "train_acc", "val_acc"]
    .map((key) => ({name: key, points: curve(training.curve, key)})).filter((s) => s.points.length),
    "loss / accuracy", "no epoch has ended yet");
  if (training.rules) {
    rules.replaceChildren(...training.rules.map((r) => el("tr", {"data-rule": r.name},
      el("td", {text: r.name}), el("td", {text: r.kind}), el("td", {class: "status-" + r.status, text: r.status}),
      el("td", {text: [r.message, r.advice].filter(Boolean).join(" ")}))));
  }
}

function renderBatches(view) {
  if (!changed("batches", view.batches)) return;
  const list = document.getElementById("batches");
  const items = (view.batches || []).map((b) => {
    const item = el("li", {"data-batch": b.batch_id}, `${b.batch_id}: ${b.status}` +
                    (b.failure_reason ? ` (${b.failure_reason.split("\n")[0]})` : "") + " ");
    if (b.predictions_url) item.append(el("a", {href: b.predictions_url, text: "predictions.csv"}));
    return item;
  });
  list.replaceChildren(...(items.length ? items : [el("li", {class: "muted", text: "no batch yet"})]));
}

let serving = null;       // the model the endpoint serves now, for the history's "serving" mark
let busy = false;         // a deployment is under way: the buttons wait

// Redraw a part only when what it shows changed: a redraw would replace the element a person (or a test)
// is about to click.
const drawn = {};
function changed(part, value) {
  const key = JSON.stringify(value);
  if (drawn[part] === key) return false;
  drawn[part] = key;
  return true;
}

function renderHistory(view) {
  const status = view.status || {};
  const deployed = status.deployed || {};
  const endpoint = status.endpoint || {};
  serving = deployed.deployment === "Serving" && endpoint.status === "InService" ? deployed.model_name : null;
  busy = deployed.deployment === "Deploying" || ["Creating", "Updating", "Deleting"].includes(endpoint.status);
  const history = status.history || [];
  if (!changed("history", [serving, busy, history])) return;
  const body = document.querySelector("#history tbody");
  const rows = history.slice().reverse().map((c, i) => {
    const latest = i === 0;
    const button = el("button", {class: "button serve", type: "button", "data-model": c.model_name,
                                 text: "Serve this one"});
    if (busy || c.model_name === serving) button.disabled = true;
    button.addEventListener("click", () => serve(c.model_name));
    return el("tr", {"data-model": c.model_name, class: latest && c.model_name === serving ? "serving" : null},
      el("td", {text: when(c.chosen_at)}),
      el("td", {text: c.model_name + (latest && c.model_name === serving ? " (serving)" : "")}),
      el("td", {text: c.dataset}),
      el("td", {class: "num", text: fixed(c.test_acc)}),
      el("td", {class: "who", text: c.chosen_by}),
      el("td", {text: c.reason}),
      el("td", {}, button));
  });
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 7, class: "muted",
                                                                         text: "no model deployed yet"}))]));
}

async function serve(model) {
  const message = document.getElementById("serve-message");
  const reason = document.getElementById("reason").value.trim();
  message.className = "muted";
  message.textContent = `asking the endpoint to serve ${model}…`;
  const response = await fetch(`/models/${encodeURIComponent(model)}/serve`, {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(reason ? {reason} : {})});
  if (!response.ok) {
    message.className = "error";
    message.textContent = await failure(response);
    return;
  }
  const view = await response.json();
  message.className = "";
  message.textContent = `${model} chosen by ${view.deployed.chosen_by}; endpoint ${view.endpoint.name} is ` +
                        `${view.endpoint.status}: it serves the model once it is InService.`;
  refresh();
}

// Each cell carries its column's name, which the phone layout shows beside it (a row becomes a card).
function labelCells() {
  for (const table of document.querySelectorAll("table")) {
    const names = Array.from(table.querySelectorAll("thead th")).map((th) => th.textContent);
    for (const row of table.querySelectorAll("tbody tr")) {
      Array.from(row.children).forEach((cell, i) => {
        if (names[i] && cell.getAttribute("colspan") === null) cell.setAttribute("data-th", names[i]);
      });
    }
  }
}

function render(view) {
  const status = view.status || {};
  const run = status.run || {};
  const [stage, kind] = stageOf(view);
  const badge = document.getElementById("stage");
  badge.textContent = stage;
  badge.className = "badge " + kind;
  text("dataset", status.dataset ? `${status.dataset.name} (marker ${status.dataset.marker.slice(0, 12)})` : "none published yet");
  text("run", run.dataset ? `tuning ${run.tuning_status || "–"}, training ${run.training_status || "–"}` +
       (run.metrics && run.metrics["test:accuracy"] !== undefined ? `, test accuracy ${fixed(run.metrics["test:accuracy"])}` : "") : "–");
  const tuning = view.tuning;
  text("tuning", tuning ? `${tuning.name} ${tuning.status} (${tuning.strategy}, ${(view.trials || []).length}/${tuning.max_trials} trials` +
       `${tuning.objective && tuning.objective.MetricName ? ", objective " + tuning.objective.Type + " " + tuning.objective.MetricName : ""})` +
       (tuning.best ? `; best ${tuning.best}` : "") : "–");
  const training = view.training;
  text("training", training ? `${training.name} ${training.status}` + (training.failure ? ": " + training.failure : "") : "–");
  text("gate", run.gate ? run.gate.reason : "–");
  const endpoint = status.endpoint, deployed = status.deployed;
  text("endpoint", endpoint ? `${endpoint.name} ${endpoint.status}` +
       (deployed ? `, model ${deployed.model_name} (${deployed.deployment}; chosen by ${deployed.chosen_by})` : "") +
       (endpoint.failure_reason ? `; ${endpoint.failure_reason}` : "") + (deployed && deployed.waiting ? `; ${deployed.waiting}` : "") : "–");
  const report = document.getElementById("report");
  report.replaceChildren(view.report_url ? el("a", {href: view.report_url, target: "_blank", text: "training report"}) :
                         document.createTextNode("not yet"));
  renderTrials(view);
  renderTraining(view);
  renderBatches(view);
  renderHistory(view);
  labelCells();
}

let lastView = null;

// The charts are drawn at the size they are shown: drawn again when the window's width changes.
let shownWidth = window.innerWidth;
window.addEventListener("resize", () => {
  if (window.innerWidth === shownWidth || lastView === null) return;
  shownWidth = window.innerWidth;
  delete drawn.trials;
  delete drawn.training;
  render(lastView);
});

async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const response = await fetch("/console/pipeline", {cache: "no-store"});
    if (!response.ok) throw new Error(await failure(response));
    lastView = await response.json();
    render(lastView);
    connection.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    connection.textContent = "not updated: " + error.message;
  }
}

refresh();
setInterval(refresh, POLL_MS);
