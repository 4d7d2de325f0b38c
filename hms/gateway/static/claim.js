// Follow a claim from submitted to paid without reloading; the page works without this script too.
(function () {
  const box = document.getElementById("claim");
  if (!box) return;
  const done = ["denied", "paid", "payment_failed", "returned"];
  const text = (s) => s.replace("_", " ");
  async function poll() {
    if (done.includes(box.dataset.status)) return;
    try {
      const r = await fetch("/claims/" + encodeURIComponent(box.dataset.claimId), { credentials: "same-origin" });
      if (r.ok) {
        const claim = await r.json();
        if (claim.status !== box.dataset.status) {
          box.dataset.status = claim.status;
          const status = document.getElementById("status");
          status.textContent = text(claim.status);
          status.className = "status status-" + claim.status;
          if (claim.status === "paid") {
            document.getElementById("explain").textContent = "$" + claim.amount.toFixed(2) + " has been sent to your bank.";
          }
          const list = document.getElementById("timeline");
          list.replaceChildren(...claim.timeline.map((t) => {
            const li = document.createElement("li");
            const span = document.createElement("span");
            span.className = "status status-" + t.status;
            span.textContent = text(t.status);
            const time = document.createElement("time");
            time.dateTime = t.at;
            time.textContent = t.at.slice(0, 19).replace("T", " ") + " UTC";
            li.append(span, " ", time);
            return li;
          }));
        }
      }
    } catch (e) { /* offline for a moment: try again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
