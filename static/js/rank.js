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
    chip.addEventListener("click", () => {
      if (dragged) { dragged = false; return; }  // the end of a touch drag, not a tap
      card.scrollIntoView({ behavior: "smooth", block: "start" });
    });
    touchDraggable(chip, id);
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

  // A finger starts no HTML5 drag: on touch the chip follows the finger (pointer events; the chips'
  // touch-action is none) and lands in the place under it when lifted. A tap stays a tap.
  let touch = null, dragged = false;
  const zones = [...board.querySelectorAll("[data-drop]")];
  const zoneAt = (x, y) => zones.find((z) => {
    const r = z.getBoundingClientRect();
    return x >= r.left && x <= r.right && y >= r.top && y <= r.bottom;
  });
  function touchDraggable(chip, id) {
    chip.addEventListener("pointerdown", (e) => {
      if (e.pointerType !== "touch") return;
      dragged = false;
      chip.setPointerCapture(e.pointerId);
      touch = { id, x: e.clientX, y: e.clientY, moved: false };
    });
    chip.addEventListener("pointermove", (e) => {
      if (!touch || touch.id !== id) return;
      const dx = e.clientX - touch.x, dy = e.clientY - touch.y;
      if (!touch.moved && Math.hypot(dx, dy) < 8) return;
      touch.moved = true;
      chip.classList.add("dragging");
      chip.style.transform = `translate(${dx}px, ${dy}px)`;
      const over = zoneAt(e.clientX, e.clientY);
      zones.forEach((z) => z.classList.toggle("over", z === over));
    });
    const end = (e, drop) => {
      if (!touch || touch.id !== id) return;
      const moved = touch.moved;
      touch = null;
      chip.style.transform = "";
      chip.classList.remove("dragging");
      zones.forEach((z) => z.classList.remove("over"));
      if (!moved) return;
      dragged = true;
      const zone = drop && zoneAt(e.clientX, e.clientY);
      if (zone) setPlace(id, zone.dataset.drop, false);
    };
    chip.addEventListener("pointerup", (e) => end(e, true));
    chip.addEventListener("pointercancel", (e) => end(e, false));
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
