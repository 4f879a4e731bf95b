//! The status page at `GET /_testbed/`: the nodes (role, readiness, PIDs, restarts), the prober's
//! SLIs per window, the error budget and burn rate, the last failures and outages. A static page
//! that reads `/_testbed/cluster` and `/_testbed/prober/status` (the prober's `/status`, relayed by
//! the front door) once a second; no build step, no external script.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::frontdoor::FrontDoor;

/// `GET /_testbed/`.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /_testbed/prober/status`: the prober's `/status`, or 404 without a prober.
pub async fn prober_status(State(door): State<Arc<FrontDoor>>) -> Response {
    let Some((url, _)) = door.prober.get() else {
        return (StatusCode::NOT_FOUND, "this cluster runs no prober").into_response();
    };
    let reply = door
        .client
        .get(format!("{url}/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match reply {
        Ok(reply) if reply.status().is_success() => match reply.bytes().await {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
        },
        Ok(reply) => (
            StatusCode::BAD_GATEWAY,
            format!("the prober answered {}", reply.status()),
        )
            .into_response(),
        Err(err) => (StatusCode::BAD_GATEWAY, format!("the prober: {err}")).into_response(),
    }
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paxos bank: cluster status</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
.bad { color: #b00020; font-weight: bold; } .good { color: #137333; }
#updated { color: #666; }
</style></head>
<body>
<h1>paxos bank: cluster status</h1>
<p id="updated">loading...</p>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>role</th><th>ready</th><th>healthy (prober)</th>
<th>node pid</th><th>paxos pid</th><th>restarts</th></tr></thead><tbody></tbody></table>
<h2>Availability</h2>
<p id="objective"></p>
<table id="slo"><thead><tr><th>target</th><th>last</th><th>5m</th><th>30m</th><th>1h</th><th>6h</th>
<th>1d</th><th>3d</th><th>30d</th><th>burn rate 5m</th><th>budget left</th></tr></thead><tbody></tbody></table>
<h2>Last outages</h2>
<table id="outages"><thead><tr><th>first failure</th><th>failed probes</th><th>action</th>
<th>new leader</th><th>elected by</th><th>lasted</th></tr></thead><tbody></tbody></table>
<h2>Last failed probes</h2>
<table id="failures"><thead><tr><th>at</th><th>target</th><th>reason</th><th>detail</th></tr></thead><tbody></tbody></table>
<script>
const pct = (x) => x == null ? "-" : (100 * x).toFixed(x >= 0.9995 ? 2 : 3) + "%";
const time = (t) => t == null ? "-" : new Date(t * 1000).toLocaleTimeString();
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) cell(tr, text, cls);
  return tr;
}
async function refresh() {
  try {
    const cluster = await (await fetch("/_testbed/cluster")).json();
    let prober = null;
    if (cluster.prober) {
      const reply = await fetch("/_testbed/prober/status");
      if (reply.ok) prober = await reply.json();
    }
    const healthy = {};
    for (const n of (prober && prober.nodes) || []) healthy[n.id] = n.healthy;
    fill("nodes", cluster.nodes.map((n) => row([
      ["node-" + n.id], [n.role],
      [n.ejected ? "ejected" : (n.ready ? "yes" : "no"), n.ready && !n.ejected ? "good" : "bad"],
      [healthy[n.id] == null ? "-" : (healthy[n.id] ? "yes" : "no"), healthy[n.id] === false ? "bad" : ""],
      [String(n.node_pid)], [String(n.paxos_pid)], [String(n.node_restarts + n.paxos_restarts)],
    ])));
    if (prober) {
      document.getElementById("objective").textContent =
        "objective " + pct(prober.objective) + " over the SLO period; mode " + prober.mode;
      fill("slo", prober.targets.map((t) => {
        const w = {};
        for (const x of t.windows) w[x.window] = x;
        const five = w["5m"] || {};
        return row([
          [t.target], [t.ok ? "ok" : (t.last_failure || "-"), t.ok ? "good" : "bad"],
          ...["5m", "30m", "1h", "6h", "1d", "3d", "30d"].map((k) => [w[k] ? pct(w[k].availability) : "-"]),
          [five.burn_rate == null ? "-" : five.burn_rate.toFixed(2), five.burn_rate > 1 ? "bad" : ""],
          [pct(t.error_budget_remaining), t.error_budget_remaining < 0 ? "bad" : ""],
        ]);
      }));
      fill("outages", prober.recoveries.slice().reverse().map((r) => row([
        [time(r.first_failure)], [String(r.failed_probes)], [r.action || "none"],
        [r.new_leader == null ? "-" : "node-" + r.new_leader], [r.elected_by],
        [r.first_success == null ? "ongoing" : ((r.first_success - r.first_failure) * 1000).toFixed(0) + " ms"],
      ])));
      fill("failures", prober.failures.slice().reverse().map((f) => row([
        [time(f.at)], [f.target], [f.reason, "bad"], [f.detail || ""],
      ])));
    } else {
      document.getElementById("objective").textContent = "this cluster runs no prober";
    }
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + " (every second); leader: " +
      (cluster.leader == null ? "-" : "node-" + cluster.leader) + "; ready: " + cluster.ready;
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach the front door: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"##;
