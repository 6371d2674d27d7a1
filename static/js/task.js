// Shared by the task screens: active-time measurement, Ctrl+Enter to submit, no double submit.
(() => {
  const form = document.getElementById("task-form");
  if (!form) return;
  // Time spent counts only while the page is visible (a tab left open overnight is not work),
  // and survives a reload of the same task (kept in this tab's sessionStorage).
  const store = "il-time:" + form.getAttribute("action");
  let active = Number(sessionStorage.getItem(store)) || 0;
  let since = document.visibilityState === "visible" ? performance.now() : null;
  const elapsed = () => Math.round(active + (since !== null ? performance.now() - since : 0));
  const save = () => sessionStorage.setItem(store, String(elapsed()));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") since = performance.now();
    else if (since !== null) { active += performance.now() - since; since = null; save(); }
  });
  window.addEventListener("pagehide", save);

  form.addEventListener("submit", (e) => {
    const submit = document.getElementById("submit-btn");
    if (submit && submit.disabled) { e.preventDefault(); return; }
    form.querySelector("[name=time_spent_ms]").value = elapsed();
    sessionStorage.removeItem(store);
    if (form.dataset.sent) { e.preventDefault(); return; }   // the Idempotency key makes a resend safe anyway
    form.dataset.sent = "1";
    if (submit) submit.setAttribute("aria-busy", "true");
  });

  // "?" (not while typing) opens the list of this screen's shortcuts; Esc closes it.
  const help = document.getElementById("shortcuts");
  const openHelp = () => { if (help && !help.open) help.showModal(); };
  document.querySelector("[data-shortcuts]")?.addEventListener("click", openHelp);
  document.addEventListener("keydown", (e) => {
    if (e.key === "?" && !e.target.matches("input[type=text], textarea, select")) { e.preventDefault(); openHelp(); return; }
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      const submit = document.getElementById("submit-btn");
      if (!submit || !submit.disabled) form.requestSubmit(submit || undefined);
    }
  });
})();
