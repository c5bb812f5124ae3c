// Live progress of a rollout page: its JSON (same sign-in cookie) polled every 2 s, the numbers replaced.
"use strict";
(function () {
  const box = document.getElementById("rollout");
  if (!box) return;
  const id = box.dataset.id;
  async function refresh() {
    try {
      const reply = await fetch(`/api/v1/rollouts/${id}`, { credentials: "same-origin" });
      if (!reply.ok) return;
      const r = await reply.json();
      const state = document.getElementById("state");
      state.textContent = r.state;
      state.className = `state-${r.state}`;
      document.getElementById("wave").textContent = r.wave;
      const reason = document.getElementById("reason");
      reason.textContent = r.reason || "";
      reason.className = r.state === "halted" ? "bad" : "";
      for (const w of r.waves) {
        const row = document.querySelector(`#waves tr[data-wave="${w.wave}"]`);
        if (!row) continue;
        for (const key of ["size", "done", "failed", "assigned", "waiting"]) {
          row.querySelector(`.${key}`).textContent = w[key];
        }
        const bar = row.querySelector(".bar");
        bar.max = w.size;
        bar.value = w.done + w.failed;
      }
    } catch (e) {
      // the console restarting: the next poll tries again
    }
  }
  setInterval(refresh, 2000);
})();
