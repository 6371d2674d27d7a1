// Small shared behaviour. Page-specific scripts live next to their templates' needs.
document.addEventListener("htmx:responseError", (e) => {
  // Show server messages from 4xx/5xx htmx responses instead of failing silently.
  const target = document.querySelector("#htmx-error") || document.querySelector("main");
  let text = "Something went wrong.";
  try { text = JSON.parse(e.detail.xhr.responseText).detail || text; } catch (_) {}
  const div = document.createElement("div");
  div.className = "flash flash-error";
  div.setAttribute("role", "alert");
  div.textContent = text;
  target.prepend(div);
});

// <select data-autosubmit> submits its form on change (no inline onchange: the CSP refuses it).
document.addEventListener("change", (e) => {
  if (e.target.matches("select[data-autosubmit]")) e.target.form.submit();
});

// <select data-navigate="/path?x="> goes to that address plus the chosen value.
document.addEventListener("change", (e) => {
  const nav = e.target.closest("select[data-navigate]");
  if (nav) location = nav.dataset.navigate + encodeURIComponent(nav.value);
});

// <form data-confirm="Question?"> asks before it submits.
document.addEventListener("submit", (e) => {
  const question = e.target.dataset && e.target.dataset.confirm;
  if (question && !confirm(question)) e.preventDefault();
});

// Elements with data-swap-errors show the server's 4xx fragment (e.g. "Draft not saved: ...") in
// their target, instead of htmx's default of dropping error responses.
document.addEventListener("htmx:beforeSwap", (e) => {
  const status = e.detail.xhr.status;
  if (status >= 400 && status < 500 && e.detail.requestConfig.elt.hasAttribute("data-swap-errors")) {
    e.detail.shouldSwap = true;
    e.detail.isError = false;
  }
});

// <button data-copy="#id"> copies that element's text (an invite or reset link) to the clipboard.
document.addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-copy]");
  if (!button) return;
  const text = document.querySelector(button.dataset.copy)?.textContent.trim() || "";
  try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
  catch { getSelection().selectAllChildren(document.querySelector(button.dataset.copy)); button.textContent = "Selected: press Ctrl+C"; }
});

// <time datetime="..." data-local> (the `when` filter): the stored UTC time, shown in this viewer's time zone.
for (const el of document.querySelectorAll("time[data-local]")) {
  const at = new Date(el.getAttribute("datetime"));
  if (isNaN(at)) continue;
  const pad = (n) => String(n).padStart(2, "0");
  const zone = Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(at).find((p) => p.type === "timeZoneName");
  el.textContent = `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${pad(at.getHours())}:${pad(at.getMinutes())}${zone ? " " + zone.value : ""}`;
  el.title = el.getAttribute("datetime").slice(0, 16).replace("T", " ") + " UTC";
}

// On a phone the navigation is one row that scrolls sideways: bring the current page's link into it.
const activeLink = document.querySelector(".nav a.active");
if (activeLink && activeLink.parentElement.scrollWidth > activeLink.parentElement.clientWidth) {
  const nav = activeLink.parentElement;
  nav.scrollLeft = activeLink.offsetLeft - nav.offsetLeft - (nav.clientWidth - activeLink.offsetWidth) / 2;
}
