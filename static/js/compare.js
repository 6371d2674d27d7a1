// Compare two outputs: keys 1/a = A, 2/b = B, 3/t = tie (not while typing the reason).
(() => {
  const form = document.getElementById("task-form");
  if (!form) return;
  const keys = { "1": "a", a: "a", "2": "b", b: "b", "3": "tie", t: "tie" };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "textarea" || (tag === "input" && e.target.type === "text")) return;
    const value = keys[e.key.toLowerCase()];
    if (!value) return;
    const radio = form.querySelector(`input[name=choice][value="${value}"]`);
    radio.checked = true;
    radio.focus();
    e.preventDefault();
  });
})();
