// The patient page's charts: one uPlot per vital, fed by /api/patients/{id}/series.
// No inline script (the CSP forbids it): everything hangs off data- attributes.
"use strict";

(function () {
  const section = document.getElementById("vitals");
  if (!section || typeof uPlot === "undefined") return;
  const patient = section.dataset.patient;
  const charts = new Map();

  function width(el) {
    return Math.max(260, Math.min(el.clientWidth || 600, 900));
  }

  function draw(figure, body) {
    const plotEl = figure.querySelector(".plot");
    const t = [], low = [], mean = [], high = [];
    for (const p of body.points) {
      t.push(p[0]); low.push(p[1]); mean.push(p[2]); high.push(p[3]);
    }
    const old = charts.get(figure);
    if (old) old.destroy();
    plotEl.textContent = "";
    if (t.length === 0) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No readings in this range.";
      plotEl.appendChild(p);
      charts.delete(figure);
      return;
    }
    const unit = figure.dataset.unit;
    const chart = new uPlot({
      width: width(plotEl),
      height: 160,
      legend: { show: false },
      // the whole requested range, even when the readings cover only part of it
      scales: { x: { time: true, range: [Date.parse(body.start) / 1000, Date.parse(body.end) / 1000] } },
      series: [
        {},
        { label: "min", stroke: "#9db7d5", width: 1, points: { show: t.length < 60 } },
        { label: figure.dataset.label + " (" + unit + ")", stroke: "#0b5cad", width: 2,
          points: { show: t.length < 60, size: 6 } },
        { label: "max", stroke: "#9db7d5", width: 1, points: { show: t.length < 60 } },
      ],
      axes: [{}, { size: 50 }],
    }, [t, low, mean, high], plotEl);
    charts.set(figure, chart);
  }

  async function load(range) {
    for (const button of section.querySelectorAll("[data-range]")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    for (const figure of section.querySelectorAll("figure.chart")) {
      const url = "/api/patients/" + encodeURIComponent(patient) + "/series?code=" +
        encodeURIComponent(figure.dataset.code) + "&range=" + range;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) throw new Error(String(response.status));
        draw(figure, await response.json());
      } catch (err) {
        figure.querySelector(".plot").textContent = "Could not load the readings (" + err.message + ").";
      }
    }
  }

  section.addEventListener("click", function (event) {
    const button = event.target.closest("[data-range]");
    if (button) load(button.dataset.range);
  });
  load("24h");
})();
