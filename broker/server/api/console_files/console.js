// The broker's web console: plain JavaScript over the same Vault HTTP API the clients
// use, so the console can do nothing a token could not do with curl. The token lives in
// sessionStorage (gone with the tab) and is sent in X-Vault-Token, never in a URL.
"use strict";

const TOKEN_KEY = "broker-console-token";
const LEASE_LIMIT = 200; // leases looked up per refresh: the console is not a report
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(method, path, body) {
  const init = { method, headers: { "X-Vault-Token": token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("/v1/" + path, init);
  const text = await resp.text();
  const data = text ? JSON.parse(text) : {};
  if (resp.status === 404 && method === "LIST") return { data: { keys: [] } };
  if (!resp.ok) {
    const errors = (data.errors || []).join("; ") || resp.statusText;
    throw Object.assign(new Error(`${method} ${path}: ${resp.status} ${errors}`), {
      status: resp.status,
    });
  }
  return data;
}

function cell(row, content, asCode) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content);
  else if (asCode) {
    const code = document.createElement("code");
    code.textContent = content;
    td.appendChild(code);
  } else td.textContent = content;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    td.className = "note";
    body.appendChild(tr);
    return;
  }
  for (const item of rows) {
    const tr = document.createElement("tr");
    render(tr, item);
    body.appendChild(tr);
  }
}

function timeLeft(seconds) {
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

async function listKeys(path) {
  return (await api("LIST", path)).data.keys || [];
}

async function leaseIds(prefix, out) {
  // sys/leases/lookup lists one level at a time, like Vault: folders end with "/".
  for (const key of await listKeys("sys/leases/lookup/" + prefix)) {
    if (out.length >= LEASE_LIMIT) return;
    if (key.endsWith("/")) await leaseIds(prefix + key, out);
    else out.push(prefix + key);
  }
}

async function refresh() {
  $("app-error").textContent = "";
  try {
    const mounts = (await api("GET", "sys/mounts")).data;
    const databaseMounts = Object.entries(mounts).filter(([, m]) => m.type === "database");
    const mountRows = [];
    const ids = [];
    for (const [path] of databaseMounts) {
      const mount = path.replace(/\/$/, "");
      const connections = await listKeys(`${mount}/config`);
      const roles = await listKeys(`${mount}/roles`);
      mountRows.push({ path, type: "database", connections, roles });
      await leaseIds(`${mount}/creds/`, ids);
    }
    fill("mounts", mountRows, (tr, m) => {
      cell(tr, m.path, true);
      cell(tr, m.type);
      cell(tr, m.connections.join(", ") || "-");
      cell(tr, m.roles.join(", ") || "-");
    });

    const leases = [];
    for (const id of ids) {
      // A lease revoked since the listing is gone: Vault's lookup answers 400 "invalid lease".
      const info = await api("PUT", "sys/leases/lookup", { lease_id: id }).then(
        (reply) => reply.data,
        (error) => {
          if (error.status === 400) return null;
          throw error;
        },
      );
      if (info && (info.state === "active" || info.state === "creating")) leases.push(info);
    }
    leases.sort((a, b) => a.ttl - b.ttl);
    $("active-count").textContent = String(leases.length);
    $("leases-note").textContent =
      ids.length >= LEASE_LIMIT ? `Showing the first ${LEASE_LIMIT}; use broker lease list for all.` : "";
    fill("leases", leases, (tr, lease) => {
      tr.dataset.leaseId = lease.id;
      cell(tr, lease.id, true);
      cell(tr, lease.id.split("/creds/")[1].split("/")[0]);
      cell(tr, timeLeft(lease.ttl));
      cell(tr, lease.expire_time ? new Date(lease.expire_time).toLocaleString() : "-");
      const button = document.createElement("button");
      button.textContent = "Revoke";
      button.className = "danger small revoke";
      button.addEventListener("click", () => revoke(lease.id, button));
      cell(tr, button);
    });

    const gauges = {};
    for (const g of (await api("GET", "sys/metrics")).Gauges || []) gauges[g.Name] = g.Value;
    $("backlog").textContent = String(gauges.broker_sweep_backlog ?? "-");
    $("failing").textContent = String(gauges.broker_leases_failing ?? "-");

    const failures = (await api("GET", "sys/leases?type=irrevocable&limit=50")).data.leases || [];
    fill("failures", failures, (tr, f) => {
      cell(tr, f.lease_id, true);
      cell(tr, String(f.attempts));
      cell(tr, f.last_error || "");
      cell(tr, f.next_attempt_time || f.due_at || "");
    });
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    $("app-error").textContent = err.message;
  }
}

async function revoke(leaseId, button) {
  button.disabled = true;
  try {
    await api("PUT", "sys/leases/revoke", { lease_id: leaseId });
    button.closest("tr").remove();
  } catch (err) {
    $("app-error").textContent = err.message;
    button.disabled = false;
  }
  await refresh();
}

async function revokePrefix(event) {
  event.preventDefault();
  const prefix = $("prefix").value.trim();
  if (!prefix || !confirm(`Revoke every lease under ${prefix}?`)) return;
  try {
    await api("PUT", "sys/leases/revoke-prefix/" + prefix.split("/").map(encodeURIComponent).join("/"));
    $("prefix").value = "";
  } catch (err) {
    $("app-error").textContent = err.message;
  }
  await refresh();
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  await enter();
}

async function enter() {
  try {
    const self = (await api("GET", "auth/token/lookup-self")).data;
    $("who").textContent = `${self.display_name} (${self.policies.join(", ")})`;
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = err.message.includes(" 403 ") ? "permission denied" : err.message;
    return;
  }
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  await refresh();
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

$("login-form").addEventListener("submit", login);
$("prefix-form").addEventListener("submit", revokePrefix);
$("refresh").addEventListener("click", refresh);
$("logout").addEventListener("click", logout);
setInterval(() => { if (!$("app-view").hidden) refresh(); }, 5000);
if (token()) enter();
