"use strict";
// The playground: three forms over this service's own API (same origin, no libraries).

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
      const ready = models.filter((m) => m.task === task && m.status === "ready");
      select.replaceChildren(...ready.map((m) => new Option(m.name, m.name)));
      select.value = ready.some((m) => m.name === kept) ? kept : (defaults[task] || "");
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
  });
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
  // A link may name the tab: /#generate, /#surprisal.
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
  legend();
  loadModels();
});
