// The review page by keyboard: j/k move between submissions, a accepts, r rejects (the reason box
// takes the focus; Enter sends), u undoes. After a decision the next submission gets the focus.
(() => {
  const cards = () => [...document.querySelectorAll(".review-item")];
  const current = () => document.activeElement?.closest(".review-item") || null;
  const focusAt = (i) => { const all = cards(); if (all.length) all[Math.max(0, Math.min(i, all.length - 1))].focus(); };
  let moveOn = null;  // id of the card whose decision was just sent: focus the one after it
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const card = current();
    const typing = e.target.matches("input, textarea, select");
    if (typing) {
      if (e.key === "Enter" && e.target.name === "reason") {
        e.preventDefault();
        moveOn = card?.id;
        card?.querySelector('button[data-key="r"]')?.click();
      } else if (e.key === "Escape") card?.focus();
      return;
    }
    const all = cards(), i = card ? all.indexOf(card) : -1;
    if (e.key === "j") { e.preventDefault(); focusAt(i + 1); }
    else if (e.key === "k") { e.preventDefault(); focusAt(i - 1); }
    else if (card && e.key === "a") { e.preventDefault(); moveOn = card.id; card.querySelector('button[data-key="a"]').click(); }
    else if (card && e.key === "r") { e.preventDefault(); card.querySelector('input[name="reason"]').focus(); }
    else if (card && e.key === "u") { const undo = card.querySelector('button[data-key="u"]'); if (undo) { e.preventDefault(); undo.click(); } }
  });
  document.addEventListener("htmx:afterSwap", (e) => {
    const card = e.detail.target?.id ? document.getElementById(e.detail.target.id) : null;
    if (!card || !card.classList.contains("review-item")) return;
    if (card.querySelector('[role="alert"]')) { card.querySelector('input[name="reason"]').focus(); moveOn = null; return; }
    if (moveOn === card.id) { moveOn = null; focusAt(cards().indexOf(card) + 1); } else card.focus();
  });
  if (!current() && document.getElementById("review-list")) focusAt(0);  // the review page starts on the first
})();
