"use strict";
// The playground: four tools over this service's own API (same origin, no libraries).

const $ = (selector, root = document) => root.querySelector(selector);

// Surprisal bins, in bits: upper bound, legend text. Colours live in style.css (.s0 to .s4).
const BINS = [
  [1, "under 1 bit"], [2, "1–2 bits"], [4, "2–4 bits"], [8, "4–8 bits"], [Infinity, "8 bits or more"],
];

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("#key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The API's own message: TGI's "error", else FastAPI's "detail" (a string or a list).
async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const detail = body.error ?? body.detail;
    if (typeof detail === "string") message = detail;
    else if (Array.isArray(detail)) {
      message = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
  } catch { /* not JSON: the status line says what there is to say */ }
  return new Error(`${message} (HTTP ${response.status})`);
}

async function post(path, body, signal) {
  const response = await fetch(path, {method: "POST", headers: headers(),
                                      body: JSON.stringify(body), signal});
  if (!response.ok) throw await apiError(response);
  return response;
}

function showError(section, error) {
  const box = $(".error", section);
  box.textContent = error ? error.message : "";
  box.hidden = !error;
}

// Run a form's work with its submit button disabled and any error shown in its section.
async function run(section, work) {
  const button = $("button[type=submit]", section);
  button.disabled = true;
  showError(section, null);
  try {
    await work();
  } catch (error) {
    if (error.name !== "AbortError") showError(section, error);  // Stop is not an error
  } finally {
    button.disabled = false;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- models --------------------------------------------------------------------------

async function loadModels() {
  const box = $("#models-error");
  try {
    const response = await fetch("/models", {headers: headers()});
    if (!response.ok) throw await apiError(response);
    const {models, defaults} = await response.json();
    for (const select of document.querySelectorAll("select[data-task]")) {
      const task = select.dataset.task;
      const kept = select.value;
      // "any": every model, the default generator first chosen (the Memory tab reads both).
      const ready = models.filter((m) => (task === "any" || m.task === task)
                                         && m.status === "ready");
      select.replaceChildren(...ready.map((m) => new Option(m.name, m.name)));
      const fallback = defaults[task === "any" ? "generation" : task] || "";
      select.value = ready.some((m) => m.name === kept) ? kept : fallback;
      if (select.selectedIndex < 0 && ready.length) select.selectedIndex = 0;
    }
    box.hidden = true;
  } catch (error) {
    box.textContent = `Could not list the models: ${error.message}`;
    box.hidden = false;
  }
}

// --- tabs ----------------------------------------------------------------------------

function selectTab(tab) {
  for (const other of document.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
  }
}

// --- classify ------------------------------------------------------------------------

function bar(label, score) {
  const row = element("div", "bar");
  const track = element("div", "track");
  const fill = element("div", "fill");
  fill.style.width = `${(score * 100).toFixed(2)}%`;
  fill.dataset.score = String(score);
  track.append(fill);
  track.setAttribute("aria-hidden", "true");
  row.append(element("span", "label", label), track,
             element("span", "value", `${(score * 100).toFixed(1)}%`));
  return row;
}

async function classify(event) {
  event.preventDefault();
  const section = $("#classify");
  await run(section, async () => {
    const response = await post("/classify", {inputs: $("#classify-text").value,
                                              model: $("#classify-model").value || undefined});
    const [labels] = await response.json();
    $("#classify-result").replaceChildren(...labels.map((l) => bar(l.label, l.score)));
    $("#classify-why").hidden = true;
    if ($("#classify-explain").checked) await explainWords();
  });
}

// Each word coloured by its integrated-gradients share of the predicted label's log-probability.
async function explainWords() {
  const text = $("#classify-text").value;
  const response = await post("/explain", {inputs: text,
                                           model: $("#classify-model").value || undefined});
  const why = await response.json();
  const scale = Math.max(1e-6, ...why.words.map((w) => Math.abs(w.contribution)));
  $("#classify-words").replaceChildren(...painted(text, why.words, (w) => w.contribution, scale,
    (w) => `${JSON.stringify(w.text)}: ${w.contribution >= 0 ? "+" : ""}`
           + `${w.contribution.toFixed(3)} to log p(${why.label})`));
  const total = why.words.reduce((sum, w) => sum + w.contribution, 0);
  $("#classify-why-info").textContent = `Why "${why.label}": each word's contribution to`
    + ` log p(${why.label}) by integrated gradients, red for, blue against. They add up to`
    + ` ${total.toFixed(3)}: from ${why.baseline_log_prob.toFixed(3)} with no words to`
    + ` ${why.log_prob.toFixed(3)}.${why.truncated ? " (Only the first words were read.)" : ""}`;
  $("#classify-why").hidden = false;
}

// --- colours: a diverging scale shared by word contributions and unit activations ------

// Blue below zero, white at zero, red above; |value| / scale sets the strength.
function diverging(value, scale) {
  const t = Math.max(-1, Math.min(1, value / scale));
  const ends = t >= 0 ? [178, 24, 43] : [33, 102, 172];
  const a = Math.abs(t);
  return ends.map((c) => Math.round(255 + (c - 255) * a));
}

function rgb(colour) {
  return `rgb(${colour.join(", ")})`;
}

// The text with each step's characters in a span coloured by `value(step)`, and the
// characters between steps (spaces the tokenizer skips) as they are.
function painted(text, steps, value, scale, describe) {
  const nodes = [];
  let at = 0;
  for (const step of steps) {
    if (step.start > at) nodes.push(document.createTextNode(text.slice(at, step.start)));
    const v = value(step);
    const span = element("span", "step", step.text === "\n" ? "↵\n" : step.text);
    const colour = diverging(v, scale);
    span.style.backgroundColor = rgb(colour);
    if (Math.abs(v / scale) > 0.6) span.style.color = "#ffffff";  // contrast on strong colours
    span.dataset.value = String(v);
    span.title = describe(step, v);
    nodes.push(span);
    at = step.end;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

// --- generate ------------------------------------------------------------------------

let generation = null;  // the AbortController of the stream in progress

function number(id, parse) {
  const text = $(id).value.trim();
  return text === "" ? undefined : parse(text);
}

// Each server-sent event of /generate_stream is one `data: {json}` block.
function* events(buffer) {
  let cut;
  while ((cut = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, cut);
    buffer.text = buffer.text.slice(cut + 2);
    const data = block.split("\n").filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).trimStart()).join("\n");
    if (data) yield JSON.parse(data);
  }
}

async function generate(event) {
  event.preventDefault();
  const section = $("#generate");
  const output = $("#generate-output");
  const info = $("#generate-info");
  const prompt = $("#generate-prompt").value;
  const generated = element("span", "generated");
  output.replaceChildren(element("span", "prompt", prompt), generated);
  info.textContent = "";
  generation = new AbortController();
  $("#generate-stop").disabled = false;
  const started = performance.now();
  await run(section, async () => {
    const parameters = {
      max_new_tokens: number("#max-tokens", (v) => parseInt(v, 10)),
      temperature: number("#temperature", parseFloat),
      top_k: number("#top-k", (v) => parseInt(v, 10)),
      top_p: number("#top-p", parseFloat),
      seed: number("#seed", (v) => parseInt(v, 10)),
    };
    const response = await post("/generate_stream", {
      inputs: prompt, model: $("#generate-model").value || undefined, parameters,
    }, generation.signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const buffer = {text: ""};
    let count = 0;
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer.text += value;
        for (const data of events(buffer)) {
          if (data.error) throw new Error(`${data.error} (${data.error_type})`);
          generated.append(data.token.text);
          count += 1;
          if (data.details) {
            const seconds = (performance.now() - started) / 1000;
            info.textContent = `${data.details.generated_tokens} tokens in ${seconds.toFixed(2)} s`
              + ` · finish: ${data.details.finish_reason} · seed ${data.details.seed}`;
          }
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") throw error;
      info.textContent = `stopped after ${count} tokens`;
    }
  });
  generation = null;
  $("#generate-stop").disabled = true;
}

// --- surprisal -----------------------------------------------------------------------

function bin(bits) {
  return BINS.findIndex(([upper]) => bits < upper);
}

function character(token) {
  const shown = token.text === "\n" ? "↵\n" : token.text;
  if (token.logprob === null) {
    const span = element("span", "first", shown);
    span.title = "first character: nothing before it to predict it from";
    return span;
  }
  const bits = -token.logprob / Math.LN2;
  const span = element("span", `s${bin(bits)}`, shown);
  span.dataset.bits = bits.toFixed(2);
  span.title = `${JSON.stringify(token.text)}: ${bits.toFixed(2)} bits`
    + ` (p = ${Math.exp(token.logprob).toPrecision(2)})`;
  return span;
}

async function surprisal(event) {
  event.preventDefault();
  const section = $("#surprisal");
  await run(section, async () => {
    const response = await post("/score", {inputs: $("#surprisal-text").value,
                                           model: $("#surprisal-model").value || undefined,
                                           parameters: {details: true}});
    const [result] = await response.json();
    const tokens = result.details.tokens;
    $("#surprisal-output").replaceChildren(...tokens.map(character));
    const worst = tokens.filter((t) => t.logprob !== null)
      .sort((a, b) => a.logprob - b.logprob).slice(0, 3)
      .map((t) => `${JSON.stringify(t.text)} (${(-t.logprob / Math.LN2).toFixed(1)} bits)`);
    $("#surprisal-info").textContent = result.tokens === 0 ? "Too short to score." :
      `${result.tokens} characters scored: ${result.bits_per_char.toFixed(2)} bits per character,`
      + ` perplexity ${result.perplexity.toFixed(2)}. Most surprising: ${worst.join(", ")}.`;
  });
}

function legend() {
  $("#surprisal-legend").replaceChildren(...BINS.map(([, text], i) => {
    const item = element("li");
    item.append(element("span", `swatch s${i}`, "a"), ` ${text}`);
    return item;
  }));
}

// --- memory --------------------------------------------------------------------------

const marks = [];  // the spans marked in the memory text: {start, end}

function memoryBody() {
  return {inputs: $("#memory-text").value, model: $("#memory-model").value || undefined,
          layer: number("#memory-layer", (v) => parseInt(v, 10))};
}

async function showUnit(unit) {
  const body = memoryBody();
  const response = await post("/inside/memory", {...body, units: [unit]});
  const memory = await response.json();
  const values = memory.series.hidden.map((row) => row[0]);
  const steps = memory.steps.map((step, i) => ({...step, value: values[i]}));
  const scale = Math.max(1, ...values.map(Math.abs));  // tanh units: 1 is saturation
  $("#memory-output").replaceChildren(...painted(body.inputs, steps, (s) => s.value, scale,
    (s, v) => `${JSON.stringify(s.text)}: ${v.toFixed(3)}`));
  $("#memory-output").dataset.unit = String(unit);
  $("#memory-info").textContent = `Unit ${unit} of layer ${memory.layer} (${memory.cell},`
    + ` ${memory.layers} layer${memory.layers > 1 ? "s" : ""}): hidden state after each step,`
    + ` from ${Math.min(...values).toFixed(2)} to ${Math.max(...values).toFixed(2)}.`;
}

async function memory(event) {
  event.preventDefault();
  await run($("#memory"), () => showUnit(number("#memory-unit", (v) => parseInt(v, 10)) ?? 0));
}

function showMarks() {
  const text = $("#memory-text").value;
  $("#memory-marks").replaceChildren(...marks.map((m) => element(
    "li", "mark", `${JSON.stringify(text.slice(m.start, m.end))} (${m.start}–${m.end})`)));
}

function markSelection() {
  const area = $("#memory-text");
  const [start, end] = [area.selectionStart, area.selectionEnd];
  showError($("#memory"), start === end ? new Error("Select some of the text first.") : null);
  if (start === end) return;
  marks.push({start, end});
  showMarks();
}

async function findUnits() {
  const section = $("#memory");
  await run(section, async () => {
    if (!marks.length) throw new Error("Mark part of the text first (select it, then Mark selection).");
    const response = await post("/inside/units", {...memoryBody(), spans: marks, top_k: 10});
    const found = await response.json();
    const rows = found.units.map((u) => {
      const row = element("tr");
      const pick = element("button", "unit", String(u.unit));
      pick.type = "button";
      pick.addEventListener("click", () => {
        $("#memory-unit").value = String(u.unit);
        run(section, () => showUnit(u.unit));
      });
      const first = element("td");
      first.append(pick);
      row.append(first, element("td", "", u.auc.toFixed(3)),
                 element("td", "", u.higher_inside ? "marked" : "others"),
                 element("td", "", u.mean_inside.toFixed(2)),
                 element("td", "", u.mean_outside.toFixed(2)));
      return row;
    });
    $("#memory-units tbody").replaceChildren(...rows);
    $("#memory-units").hidden = false;
    heatMap(found);
    $("#memory-unit").value = String(found.units[0].unit);
    await showUnit(found.units[0].unit);
  });
}

// Rows: the top units; columns: the steps; a strip above marks the marked steps.
function heatMap(found) {
  const canvas = $("#memory-heatmap");
  const steps = found.steps.length;
  const units = found.units.length;
  const box = $("#memory-heat");
  box.hidden = false;
  const cell = Math.max(2, Math.floor(box.clientWidth / steps));
  const row = 14;
  const strip = 4;
  canvas.width = steps * cell;
  canvas.height = strip + units * row;
  Object.assign(canvas.dataset, {cell: String(cell), row: String(row), strip: String(strip),
                                 units: found.units.map((u) => u.unit).join(",")});
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.fillStyle = "#1d2330";
  found.steps.forEach((s, t) => {
    if (marks.some((m) => s.start < m.end && s.end > m.start)) context.fillRect(t * cell, 0, cell, strip);
  });
  found.values.forEach((values, t) => {
    values.forEach((v, k) => {
      context.fillStyle = rgb(diverging(v, 1));
      context.fillRect(t * cell, strip + k * row, cell, row);
    });
  });
  canvas.onmousemove = (e) => {
    const t = Math.floor(e.offsetX / cell);
    const k = Math.floor((e.offsetY - strip) / row);
    if (t < 0 || t >= steps || k < 0 || k >= units) return;
    canvas.title = `unit ${found.units[k].unit}, step ${t} ${JSON.stringify(found.steps[t].text)}:`
      + ` ${found.values[t][k].toFixed(3)}`;
  };
}

function memoryLegend() {
  $("#memory-legend").replaceChildren(...[-1, -0.5, 0, 0.5, 1].map((v) => {
    const item = element("li");
    const swatch = element("span", "swatch", "a");
    swatch.style.backgroundColor = rgb(diverging(v, 1));
    if (Math.abs(v) > 0.6) swatch.style.color = "#ffffff";
    item.append(swatch, ` ${v}`);
    return item;
  }));
}

// --- start ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const key = $("#key");
  key.value = sessionStorage.getItem("textrnn-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("textrnn-key", key.value);
    loadModels();
  });
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab));
  }
  // A link may name the tab: /#generate, /#surprisal, /#memory.
  const fromHash = () => {
    const wanted = document.getElementById(`tab-${location.hash.slice(1)}`);
    if (wanted) selectTab(wanted);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  $("#classify-form").addEventListener("submit", classify);
  $("#generate-form").addEventListener("submit", generate);
  $("#generate-stop").addEventListener("click", () => generation && generation.abort());
  $("#surprisal-form").addEventListener("submit", surprisal);
  $("#memory-form").addEventListener("submit", memory);
  $("#memory-mark").addEventListener("click", markSelection);
  $("#memory-clear").addEventListener("click", () => { marks.length = 0; showMarks(); });
  $("#memory-text").addEventListener("input", () => { marks.length = 0; showMarks(); });
  $("#memory-find").addEventListener("click", findUnits);
  legend();
  memoryLegend();
  loadModels();
});
