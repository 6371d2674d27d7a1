// Write a demonstration: live character counter (the textarea's maxlength enforces the limit).
(() => {
  const box = document.getElementById("demo-text");
  if (!box) return;
  const counter = document.getElementById("demo-counter");
  const count = counter.querySelector("[data-count]");
  const limit = Number(box.dataset.limit);
  const update = () => {
    const n = box.value.length;
    count.textContent = n;
    counter.classList.toggle("warn", n > limit * 0.9 && n <= limit);
    counter.classList.toggle("bad", n >= limit);
  };
  box.addEventListener("input", update);
  update();
  // Put the caret at the end of a restored draft.
  box.setSelectionRange(box.value.length, box.value.length);
})();
