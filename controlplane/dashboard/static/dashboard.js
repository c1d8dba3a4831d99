// lorafleet dashboard: a little plain JavaScript on top of server-rendered pages.
// Every feature also works without it (forms post normally); this only refreshes states in
// place, narrows the hardware choices, confirms deletes and runs "Try it" without a reload.
"use strict";

const REFRESH_MS = 3000;

// Live state: an element with data-refresh="<url>" is re-rendered from that server partial.
// Its HTML is replaced only when it changed, so focus and scroll stay put between changes.
function startRefresh(el) {
  const url = el.dataset.refresh;
  let busy = false;
  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.status === 404 && el.id.startsWith("endpoint-")) {
        window.location.assign(el.closest("body").querySelector(".brand").href);
        return;
      }
      if (!response.ok) return;
      const html = await response.text();
      if (html.trim() !== (el.dataset.lastHtml || el.innerHTML.trim())) {
        el.innerHTML = html;
        el.dataset.lastHtml = html.trim();
        scrollLogsToEnd(el);
      }
    } catch (_) {
      // The control plane is restarting or the network blinked: try again next tick.
    } finally {
      busy = false;
    }
  }
  el.dataset.lastHtml = "";
  window.setInterval(tick, REFRESH_MS);
}

// Logs read bottom-up: keep the newest lines in view.
function scrollLogsToEnd(root) {
  root.querySelectorAll("pre.logs").forEach((pre) => { pre.scrollTop = pre.scrollHeight; });
}

// Vendor -> Region -> Instance type: options carry data-vendor / data-region; only those
// matching the current choice stay visible and selectable.
function narrowHardware(form) {
  const vendor = form.querySelector("#vendor");
  const region = form.querySelector("#region");
  const instance = form.querySelector("#instance_type");
  if (!vendor || !region || !instance) return;
  function filter(select, matches) {
    let firstVisible = null;
    for (const option of select.options) {
      const ok = matches(option);
      option.hidden = !ok;
      option.disabled = !ok;
      if (ok && firstVisible === null) firstVisible = option;
    }
    const current = select.options[select.selectedIndex];
    if ((!current || current.disabled) && firstVisible) firstVisible.selected = true;
  }
  function update() {
    filter(region, (o) => o.dataset.vendor === vendor.value);
    filter(instance, (o) => o.dataset.vendor === vendor.value && o.dataset.region === region.value);
  }
  vendor.addEventListener("change", update);
  region.addEventListener("change", update);
  update();
}

// Delete asks first. Without JavaScript the server shows a confirmation page instead.
// Delegated from the document, so forms inside a live partial (the adapters' Remove buttons) keep it
// after a refresh re-renders them.
function confirmBeforeSubmit(event) {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.matches("form[data-confirm]")) return;
  if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
  form.querySelector('input[name="confirm"]').value = "yes";
}

// "Try it": post the form with fetch and show the generated text in place.
function asyncForm(form) {
  const output = document.getElementById(form.dataset.async);
  const button = form.querySelector('button[type="submit"]');
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    output.replaceChildren(paragraph("muted", "Generating…"));
    try {
      const response = await fetch(form.action, {
        method: "POST", body: new FormData(form), headers: { Accept: "application/json" },
      });
      const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (!response.ok || data.error) {
        const alert = paragraph("alert", data.error || `HTTP ${response.status}`);
        alert.setAttribute("role", "alert");
        output.replaceChildren(alert);
      } else {
        const pre = document.createElement("pre");
        pre.className = "generated";
        pre.textContent = data.generated_text;
        output.replaceChildren(paragraph("muted", data.label), pre);
      }
    } catch (error) {
      output.replaceChildren(paragraph("alert", `The request failed: ${error}`));
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
}

// Copy buttons: the text of the element named by data-copy (selectable without JavaScript too).
function copyButton(button) {
  button.addEventListener("click", async () => {
    const source = document.getElementById(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(source.textContent);
      button.textContent = "Copied";
    } catch (_) {
      window.getSelection().selectAllChildren(source);
      button.textContent = "Selected";
    }
    window.setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
}

function paragraph(className, text) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(startRefresh);
  scrollLogsToEnd(document);
  document.querySelectorAll("form.create-form").forEach(narrowHardware);
  document.addEventListener("submit", confirmBeforeSubmit);
  document.querySelectorAll("form[data-async]").forEach(asyncForm);
  document.querySelectorAll("button[data-copy]").forEach(copyButton);
  const invalid = document.querySelector('[aria-invalid="true"]');
  if (invalid) invalid.focus();
});
