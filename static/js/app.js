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
