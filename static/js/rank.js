// Rank outputs. The per-output "Place" selects are the form's truth (they also work without
// JavaScript); this board mirrors them and lets the labeler set places by drag and drop or by
// keyboard on the letter chips: 1..K = that place, ArrowUp/ArrowDown = move, 0/Delete = take out.
// On a focused output card, 1..7 sets its quality (Likert) and moves to the next card; f opens its flags.
(() => {
  const form = document.getElementById("task-form");
  const board = document.querySelector("[data-board]");
  if (!form || !board) return;
  const cards = [...form.querySelectorAll(".output-card")];
  const k = cards.length;
  const selectOf = (id) => form.querySelector(`select[name="place_${id}"]`);
  const status = document.querySelector("[data-status]");
  const submit = document.getElementById("submit-btn");
  board.hidden = false;

  const chips = new Map();
  for (const card of cards) {
    const id = card.dataset.output, letter = card.dataset.letter;
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.textContent = letter;
    chip.draggable = true;
    chip.dataset.output = id;
    chip.setAttribute("aria-describedby", "board-help");
    chip.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData("text/plain", id);
      e.dataTransfer.effectAllowed = "move";
      chip.classList.add("dragging");
    });
    chip.addEventListener("dragend", () => chip.classList.remove("dragging"));
    chip.addEventListener("keydown", (e) => onChipKey(e, id));
    chip.addEventListener("click", () => card.scrollIntoView({ behavior: "smooth", block: "start" }));
    chips.set(id, chip);
  }

  cards.forEach((card, i) => {
    card.tabIndex = 0;
    card.addEventListener("keydown", (e) => {
      if (e.target !== card || e.ctrlKey || e.metaKey || e.altKey) return;
      if (/^[1-7]$/.test(e.key)) {
        e.preventDefault();
        card.querySelector(`input[type=radio][value="${e.key}"]`).checked = true;
        update();
        announce(`Output ${card.dataset.letter} rated ${e.key} of 7`);
        (cards[i + 1] || chips.get(cards[0].dataset.output)).focus();
      } else if (e.key === "f") {
        e.preventDefault();
        const flags = card.querySelector("details.flags");
        flags.open = true;
        flags.querySelector("input")?.focus();
      }
    });
  });

  for (const zone of board.querySelectorAll("[data-drop]")) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const id = e.dataTransfer.getData("text/plain");
      if (chips.has(id)) setPlace(id, zone.dataset.drop, false);
    });
  }

  function placeOf(id) { return selectOf(id).value; }

  function setPlace(id, place, keepFocus) {
    selectOf(id).value = place;
    render();
    const letter = chips.get(id).textContent;
    announce(place ? `${letter} placed ${place} of ${k}` : `${letter} taken out`);
    if (keepFocus) chips.get(id).focus();
  }

  function onChipKey(e, id) {
    const current = Number(placeOf(id)) || 0;
    let next = null;
    if (/^[1-9]$/.test(e.key) && Number(e.key) <= k) next = Number(e.key);
    else if (e.key === "ArrowUp") next = current ? Math.max(1, current - 1) : 1;
    else if (e.key === "ArrowDown") next = Math.min(k, current + 1);
    else if (e.key === "0" || e.key === "Delete" || e.key === "Backspace") next = 0;
    if (next === null) return;
    e.preventDefault();
    setPlace(id, next ? String(next) : "", true);
  }

  function render() {
    for (const [id, chip] of chips) {
      const place = placeOf(id);
      const zone = board.querySelector(`[data-drop="${place}"] [data-items]`);
      zone.appendChild(chip);
      chip.setAttribute("aria-label", `Output ${chip.textContent}, ${place ? "place " + place + " of " + k : "not placed"}`);
      form.querySelector(`.output-card[data-output="${id}"]`).dataset.place = place;
    }
    // keep each place's chips in letter order
    for (const items of board.querySelectorAll("[data-items]")) {
      [...items.children].sort((a, b) => a.textContent.localeCompare(b.textContent)).forEach((c) => items.appendChild(c));
    }
    update();
  }

  function update() {
    const placed = cards.filter((c) => placeOf(c.dataset.output)).length;
    const rated = cards.filter((c) => c.querySelector("input[type=radio]:checked")).length;
    const ready = placed === k && rated === k;
    submit.disabled = !ready;
    status.textContent = ready ? "Ready to submit." : `${placed} of ${k} placed · ${rated} of ${k} rated`;
    for (const card of cards) {
      const n = card.querySelectorAll("input[type=checkbox]:checked").length;
      card.querySelector("[data-flag-count]").textContent = n || "";
    }
  }

  let live;
  function announce(text) {
    if (!live) {
      live = document.createElement("div");
      live.className = "visually-hidden";
      live.setAttribute("aria-live", "assertive");
      document.body.appendChild(live);
    }
    live.textContent = text;
  }

  form.addEventListener("change", (e) => { if (e.target.matches("[data-place-select]")) render(); else update(); });
  render();
})();
