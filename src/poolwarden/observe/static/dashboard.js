// poolwarden dashboard: polls <base>/data and draws each resource with uPlot (vendored, no CDN).
// Every value from the server goes into the page through textContent, never as HTML.
"use strict";
(function () {
  const base = document.body.dataset.base || "";
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue("--" + name).trim();
  const WINDOW = 300;           // points kept per resource in the browser
  const state = Object.create(null);  // name -> {data arrays, charts, elements}; no prototype: any name is safe
  let since = 0;
  let interval = 1;
  let failures = 0;
  const eventsSeen = [];

  const SERIES = {
    connections: [["used", "used"], ["idle", "idle"], ["connecting", "connecting"], ["max", "max"]],
    queue: [["waiting", "queue"]],
    wait: [["wait_p50_ms", "wait50"], ["wait_p99_ms", "wait99"]],
    rate: [["acquires_per_s", "rate"]],
    loop: [["lag_ms", "wait99"], ["threshold", "bad"]],
    errors: [["timeout", "bad"], ["overloaded", "warn"], ["backend_down", "down"], ["connect_error", "wait99"],
             ["ping_failed", "connecting"], ["discarded", "max"]],
  };
  const TITLES = { connections: "Connections (used · idle · connecting vs max)", queue: "Callers queued",
                   wait: "Wait for a connection (ms, p50 · p99)", rate: "Acquires / s",
                   errors: "Errors & refusals per interval",
                   loop: "Event loop lag (largest per interval) vs the watchdog's threshold" };
  const POOL_CHARTS = ["connections", "queue", "wait", "rate", "errors"];
  const LABELS = { wait_p50_ms: "p50", wait_p99_ms: "p99", acquires_per_s: "acquires/s", waiting: "queued",
                   connect_error: "connect error", ping_failed: "ping failed", backend_down: "backend down",
                   lag_ms: "lag" };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  function fmt(v, digits) {
    v = num(v);
    if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
    return v.toFixed(digits);
  }

  const pad = (n) => String(n).padStart(2, "0");
  function clock(t) { const d = new Date(t * 1000); return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
  function ms(v) { return v >= 1000 ? fmt(v / 1000, 1) + "s" : fmt(v, v < 10 && v % 1 ? 1 : 0) + "ms"; }

  function axes(kind) {
    const common = { stroke: color("muted"), grid: { stroke: color("line"), width: 1 },
                     ticks: { stroke: color("line"), width: 1 }, font: "11px system-ui, sans-serif" };
    return [Object.assign({}, common, { values: (u, vals) => vals.map(clock) }),
            Object.assign({}, common, { size: 58,
              values: (u, vals) => vals.map((v) => (kind === "wait" || kind === "loop" ? ms(v) : fmt(v, v < 10 && v % 1 ? 1 : 0))) })];
  }

  function makeChart(host, kind) {
    const timed = kind === "wait" || kind === "loop";
    const series = [{ value: (u, v) => (v == null ? "–" : clock(v)) }];
    for (const [key, c] of SERIES[kind]) {
      const s = { label: LABELS[key] || key, stroke: color(c), width: 1.6, points: { show: false },
                  value: (u, v) => (v == null ? "–" : timed ? ms(v) : fmt(v, kind === "rate" ? 1 : 0)) };
      if (key === "max" || key === "threshold") { s.dash = [5, 4]; s.width = 1.2; }
      if (key === "used" || key === "waiting") s.fill = color(c) + "33";
      if (kind === "errors") { s.paths = uPlot.paths.stepped({ align: 1 }); s.fill = color(c) + "22"; }
      series.push(s);
    }
    const opts = {
      width: Math.max(host.clientWidth - 4, 200), height: 150, series,
      axes: axes(kind), legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, timed ? 1 : 4) * 1.1] } },
    };
    const data = [[]];
    for (let i = 1; i < series.length; i++) data.push([]);
    return new uPlot(opts, data, host);
  }

  function ensure(name, info) {
    if (state[name]) return state[name];
    const card = el("article", "resource");
    card.dataset.resource = name;
    const head = el("header");
    head.append(el("h2", "", name), el("span", "driver", String(info.driver || "")));
    const stateBadge = el("span", "badge"), circuitBadge = el("span", "badge");
    head.append(stateBadge, circuitBadge);
    const kpis = el("div", "kpis");
    const kpi = {};
    // a Redis or HTTP client pools inside its driver: no queue or waits of ours to show
    const client = info.kind === "http" || info.kind === "redis";
    const kpiList = client ? [["used", "in use"]]
                           : [["used", "in use"], ["waiting", "queued"], ["rate", "acq/s"], ["p99", "wait p99"]];
    for (const [key, label] of kpiList) {
      const box = el("div", "kpi");
      kpi[key] = el("b", "", "–");
      box.append(kpi[key], el("span", "", label));
      kpis.append(box);
    }
    head.append(kpis);
    const err = el("div", "lasterr");
    err.hidden = true;
    const charts = el("div", "charts");
    card.append(head, err, charts);
    document.getElementById("resources").append(card);
    const plots = {};
    const data = { t: [] };
    for (const kind of client ? ["connections", "errors"] : POOL_CHARTS) {
      const box = el("div", "chart");
      box.dataset.chart = kind;
      if (kind === "errors") box.classList.add("wide");
      box.append(el("h3", "", TITLES[kind]));
      const host = el("div");
      box.append(host);
      charts.append(box);
      plots[kind] = makeChart(host, kind);
      plots[kind].host = host;
    }
    for (const kind of POOL_CHARTS) for (const [key] of SERIES[kind]) data[key] = [];
    return (state[name] = { card, stateBadge, circuitBadge, kpi, err, plots, data });
  }

  function push(r, p) {
    const d = r.data;
    d.t.push(num(p.t));
    for (const k of ["used", "idle", "connecting", "max", "waiting", "wait_p50_ms", "wait_p99_ms", "acquires_per_s"]) {
      d[k].push(num(p[k]));
    }
    const errors = p.errors && typeof p.errors === "object" ? p.errors : {};
    let discarded = 0;
    for (const [k, v] of Object.entries(errors)) if (k.startsWith("discarded:")) discarded += num(v);
    for (const k of ["timeout", "overloaded", "backend_down", "connect_error", "ping_failed"]) d[k].push(num(errors[k]));
    d.discarded.push(discarded);
    if (d.t.length > WINDOW) for (const k of Object.keys(d)) d[k].shift();
  }

  function badge(b, text, kind) { b.textContent = text; b.className = "badge " + kind; }

  function render(name, info) {
    const r = ensure(name, info);
    for (const p of info.points || []) push(r, p);
    const d = r.data;
    for (const [kind, plot] of Object.entries(r.plots)) {
      plot.setData([d.t, ...SERIES[kind].map(([key]) => d[key])]);
    }
    const n = d.t.length - 1;
    const st = String(info.state || "?"), circuit = String(info.circuit || "?");
    if (st === "open") badge(r.stateBadge, info.ready ? "ready" : "not ready", info.ready ? "ok" : "bad");
    else badge(r.stateBadge, st, st === "closed" ? "bad" : "warn");
    badge(r.circuitBadge, "circuit " + circuit, circuit === "open" ? "bad" : "ok");
    if (n >= 0) {
      r.kpi.used.textContent = d.used[n] + " / " + (d.max[n] || "∞");
      if (r.kpi.waiting) {
        r.kpi.waiting.textContent = String(d.waiting[n]);
        r.kpi.rate.textContent = fmt(d.acquires_per_s[n], 1);
        r.kpi.p99.textContent = ms(d.wait_p99_ms[n]);
      }
    }
    r.err.hidden = !info.last_error || circuit !== "open";
    r.err.textContent = info.last_error ? "last error: " + String(info.last_error) : "";
  }

  let loopCard = null;

  function renderLoop(loop) {
    if (!loop || typeof loop !== "object") return;
    if (!loopCard) {
      const card = el("article", "resource");
      card.dataset.resource = "event loop";
      const head = el("header");
      head.append(el("h2", "", "event loop"), el("span", "driver", "watchdog " + ms(num(loop.threshold_ms))));
      const status = el("span", "badge");
      head.append(status);
      const kpis = el("div", "kpis");
      const kpi = {};
      for (const [key, label] of [["lag", "max lag"], ["stalls", "stalls"]]) {
        const box = el("div", "kpi");
        kpi[key] = el("b", "", "–");
        box.append(kpi[key], el("span", "", label));
        kpis.append(box);
      }
      head.append(kpis);
      const charts = el("div", "charts");
      const box = el("div", "chart wide");
      box.dataset.chart = "loop";
      box.append(el("h3", "", TITLES.loop));
      const host = el("div");
      box.append(host);
      charts.append(box);
      card.append(head, charts);
      document.getElementById("resources").append(card);
      const plot = makeChart(host, "loop");
      plot.host = host;
      loopCard = { status, kpi, plots: { loop: plot }, data: { t: [], lag_ms: [], threshold: [], stalls: [] } };
      state["\u0000loop"] = loopCard;  // resized with the others
    }
    const d = loopCard.data;
    for (const p of Array.isArray(loop.points) ? loop.points : []) {
      d.t.push(num(p.t)); d.lag_ms.push(num(p.lag_ms)); d.threshold.push(num(loop.threshold_ms));
      d.stalls.push(num(p.stalls));
      if (d.t.length > WINDOW) for (const k of Object.keys(d)) d[k].shift();
    }
    loopCard.plots.loop.setData([d.t, d.lag_ms, d.threshold]);
    const n = d.t.length - 1;
    if (n < 0) return;
    const recent = d.stalls[n] - d.stalls[0];
    badge(loopCard.status, recent > 0 ? "blocked " + recent + "×" : "responsive", recent > 0 ? "bad" : "ok");
    loopCard.kpi.lag.textContent = ms(Math.max(...d.lag_ms.slice(-10)));
    loopCard.kpi.stalls.textContent = String(d.stalls[n]);
  }

  const TONE = { "circuit.opened": "bad", "circuit.closed": "ok", "connection.failed": "bad", "ping.failed": "warn",
                 "connection.discarded": "warn", "leak.suspected": "warn", "leak.lost": "bad", "leak.returned": "warn",
                 "drain.abandoned": "bad", "loop.blocked": "bad", "pool.ready": "ok", "pool.degraded": "warn",
                 "pool.paused": "warn", "pool.resumed": "ok", "client.ready": "ok" };

  function describe(e) {
    const bits = [];
    if (e.route) bits.push("route: " + e.route);
    if (e.detail) bits.push(String(e.detail));
    else if (e.reason) bits.push("reason: " + e.reason);
    return bits.join(" · ");
  }

  function addEvents(events) {
    const list = document.getElementById("events");
    for (const e of events) {
      if (eventsSeen.includes(e.seq)) continue;
      eventsSeen.push(e.seq);
      if (eventsSeen.length > 500) eventsSeen.shift();
      const empty = list.querySelector(".empty");
      if (empty) empty.remove();
      // a burst of connects or discards is one line with a count; the detail shown is the latest
      const noisy = ["connection.opened", "connection.failed", "connection.recycled", "connection.discarded"];
      const key = [e.event, e.resource, e.reason, e.route, noisy.includes(e.event) ? "" : e.detail].join("\u0000");
      const top = list.firstElementChild;
      if (top && top.dataset.key === key) {  // a burst of the same event: one line with a count
        const n = Number(top.dataset.count) + 1;
        top.dataset.count = String(n);
        top.querySelector(".count").textContent = "×" + n;
        top.querySelector(".when").textContent = new Date(num(e.t) * 1000).toLocaleTimeString([], { hour12: false });
        const detail = top.querySelector(".detail");
        if (detail && e.detail) detail.textContent = describe(e);
        continue;
      }
      const li = el("li");
      li.dataset.key = key;
      li.dataset.count = "1";
      li.dataset.event = String(e.event);
      const when = new Date(num(e.t) * 1000).toLocaleTimeString([], { hour12: false });
      li.append(el("span", "when", when), el("span", "tag " + (TONE[e.event] || "info"), String(e.event)),
                el("span", "res", String(e.resource)), el("span", "count", ""));
      const text = describe(e);
      if (text) li.append(el("div", "detail", text));
      list.prepend(li);
      while (list.children.length > 200) list.lastChild.remove();
    }
  }

  function live(ok, text) {
    document.getElementById("live-dot").className = "dot " + (ok ? "on" : "off");
    document.getElementById("live-text").textContent = text;
  }

  async function tick() {
    try {
      const res = await fetch(base + "/data?since=" + since, { cache: "no-store" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const body = await res.json();
      interval = Math.min(Math.max(num(body.interval) || 1, 0.2), 60);
      for (const [name, info] of Object.entries(body.resources || {})) {
        render(name, info);
        for (const p of info.points || []) since = Math.max(since, num(p.t));
      }
      renderLoop(body.loop);
      addEvents(body.events || []);
      failures = 0;
      live(true, "live · " + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (err) {
      failures += 1;
      live(false, "no data (" + String(err.message || err).slice(0, 40) + ")");
    }
    setTimeout(tick, interval * 1000);
  }

  window.addEventListener("resize", () => {
    for (const r of Object.values(state)) {
      for (const plot of Object.values(r.plots)) plot.setSize({ width: Math.max(plot.host.clientWidth - 4, 200), height: 150 });
    }
  });

  for (const b of document.querySelectorAll("#actions button[data-url]")) {
    b.addEventListener("click", async () => {
      b.classList.add("busy");
      try {
        const res = await fetch(b.dataset.url, { method: "POST" });
        b.title = "last: HTTP " + res.status;
      } catch (err) {
        b.title = "failed: " + String(err);
      } finally {
        b.classList.remove("busy");
      }
    });
  }

  // for tests and curious operators: how many points each resource's charts hold
  window.poolwardenDashboard = { points: (name) => (state[name] ? state[name].data.t.length : 0),
                                 series: (name, key) => (state[name] && state[name].data[key] ? state[name].data[key].slice() : []),
                                 resources: () => Object.keys(state).filter((k) => !k.startsWith("\u0000")) };
  tick();
})();
