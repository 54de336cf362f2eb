// An in-memory SCIM 2.0 server (Users and Groups) built on the scimmy packages, for tenure's
// SCIM connector tests. It prints "listening <url>" on stdout once it accepts requests.
//
// Environment:
//   PORT                 port on 127.0.0.1 (default 0: any free port)
//   SCIM_TOKEN           bearer token clients must send (default "test-token")
//   PATCH_UNSUPPORTED=1  answer 501 to every PATCH and advertise patch.supported=false
//   PATCH_ADVERTISED=1   with PATCH_UNSUPPORTED, keep advertising patch.supported=true (a target
//                        whose ServiceProviderConfig is wrong, to test the fallback on 501)
//   IGNORE_PATCH=1       answer 200 with the unchanged resource to every PATCH, changing nothing
//   FILTER_UNSUPPORTED=1 advertise filter.supported=false and answer 400 to ?filter=
//   FAIL="status:n[:retry-after]"  answer the first n requests to /Users and /Groups with
//                        status (e.g. 429:2:7 or 503:1), with Retry-After when given
//
// Users' "groups" attribute is computed from the groups' members, as RFC 7643 4.1.2 says.
import express from "express";
import SCIMMY from "scimmy";
import SCIMMYRouters from "scimmy-routers";
import {randomUUID} from "node:crypto";

const TOKEN = process.env.SCIM_TOKEN ?? "test-token";
const PORT = Number(process.env.PORT ?? 0);
const PATCH_UNSUPPORTED = process.env.PATCH_UNSUPPORTED === "1";
const PATCH_ADVERTISED = process.env.PATCH_ADVERTISED === "1";
const IGNORE_PATCH = process.env.IGNORE_PATCH === "1";
const FILTER_UNSUPPORTED = process.env.FILTER_UNSUPPORTED === "1";
let [failStatus, failCount, failRetryAfter] = (process.env.FAIL ?? "").split(":");
failCount = Number(failCount ?? 0);

const users = new Map();  // id -> user (without groups)
const groups = new Map(); // id -> group
const clone = (o) => JSON.parse(JSON.stringify(o));
const notFound = (id) => new SCIMMY.Types.Error(404, null, `Resource ${id} not found`);
const meta = (old) => {
  const now = new Date().toISOString();
  return {created: old?.meta?.created ?? now, lastModified: now};
};

function groupsOf(userId) {
  const out = [];
  for (const g of groups.values())
    if ((g.members ?? []).some((m) => m.value === userId))
      out.push({value: g.id, display: g.displayName, type: "direct"});
  return out;
}
const withGroups = (u) => ({...clone(u), groups: groupsOf(u.id)});

SCIMMY.Resources.declare(SCIMMY.Resources.User)
  .ingress((resource, instance) => {
    const body = clone(instance);
    delete body.groups; // read-only: membership is changed through /Groups
    for (const u of users.values())
      if (u.userName === body.userName && u.id !== resource.id)
        throw new SCIMMY.Types.Error(409, "uniqueness", "userName already exists");
    if (resource.id) {
      const old = users.get(resource.id);
      if (!old) throw notFound(resource.id);
      const u = {...body, id: resource.id, meta: meta(old)};
      users.set(u.id, u);
      return withGroups(u);
    }
    const u = {active: true, ...body, id: randomUUID(), meta: meta()};
    users.set(u.id, u);
    return withGroups(u);
  })
  .egress((resource) => {
    if (resource.id) {
      const u = users.get(resource.id);
      if (!u) throw notFound(resource.id);
      return withGroups(u);
    }
    const all = [...users.values()].map(withGroups);
    return resource.filter ? resource.filter.match(all) : all;
  })
  .degress((resource) => {
    if (!users.delete(resource.id)) throw notFound(resource.id);
    for (const g of groups.values()) g.members = (g.members ?? []).filter((m) => m.value !== resource.id);
  });

SCIMMY.Resources.declare(SCIMMY.Resources.Group)
  .ingress((resource, instance) => {
    const body = clone(instance);
    // Members are a set: adding a member twice leaves one.
    if (body.members) body.members = [...new Map(body.members.map((m) => [m.value, m])).values()];
    for (const m of body.members ?? [])
      if (!users.has(m.value) && !groups.has(m.value))
        throw new SCIMMY.Types.Error(400, "invalidValue", `member ${m.value} does not exist`);
    if (resource.id) {
      const old = groups.get(resource.id);
      if (!old) throw notFound(resource.id);
      const g = {...body, id: resource.id, meta: meta(old)};
      groups.set(g.id, g);
      return clone(g);
    }
    for (const g of groups.values())
      if (g.displayName === body.displayName)
        throw new SCIMMY.Types.Error(409, "uniqueness", "displayName already exists");
    const g = {members: [], ...body, id: randomUUID(), meta: meta()};
    groups.set(g.id, g);
    return clone(g);
  })
  .egress((resource) => {
    if (resource.id) {
      const g = groups.get(resource.id);
      if (!g) throw notFound(resource.id);
      return clone(g);
    }
    const all = [...groups.values()].map(clone);
    return resource.filter ? resource.filter.match(all) : all;
  })
  .degress((resource) => {
    if (!groups.delete(resource.id)) throw notFound(resource.id);
  });

const app = express();

// Express 5 parses req.query afresh on every access, so scimmy-routers' conversion of
// startIndex and count to numbers would be lost and paging ignored: pin the parsed object.
app.use((req, res, next) => {
  Object.defineProperty(req, "query", {value: {...req.query}, writable: true, configurable: true});
  next();
});

// Faults go in front of the SCIM routers so they win over scimmy's own handling.
app.use("/scim/v2", (req, res, next) => {
  const resource = /^\/(Users|Groups)(\/|\?|$)/.test(req.url);
  if (resource && failCount > 0) {
    failCount--;
    if (failRetryAfter) res.set("Retry-After", failRetryAfter);
    res.status(Number(failStatus)).type("application/scim+json").send(JSON.stringify({
      schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"],
      status: failStatus, detail: "injected failure"}));
    return;
  }
  if (req.headers.authorization !== `Bearer ${TOKEN}`) return next(); // scimmy answers 401
  if (resource && req.method === "PATCH" && PATCH_UNSUPPORTED) {
    res.status(501).type("application/scim+json").send(JSON.stringify({
      schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"], status: "501", detail: "PATCH is not supported"}));
    return;
  }
  if (resource && req.method === "PATCH" && IGNORE_PATCH) {
    const [, kind, id] = req.path.split("/");
    const store = kind === "Users" ? users : groups;
    const found = store.get(id);
    if (!found) return next();
    res.status(200).type("application/scim+json").send(JSON.stringify({
      schemas: [kind === "Users" ? "urn:ietf:params:scim:schemas:core:2.0:User" : "urn:ietf:params:scim:schemas:core:2.0:Group"],
      ...(kind === "Users" ? withGroups(found) : clone(found))}));
    return;
  }
  if (resource && req.method === "GET" && FILTER_UNSUPPORTED && req.query.filter !== undefined) {
    res.status(400).type("application/scim+json").send(JSON.stringify({
      schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"], status: "400", scimType: "invalidFilter",
      detail: "filtering is not supported"}));
    return;
  }
  next();
});

app.use("/scim/v2", new SCIMMYRouters({
  type: "bearer",
  handler: (req) => {
    if (req.header("Authorization") !== `Bearer ${TOKEN}`) throw new Error("Authorization not detected!");
    return "test-client";
  },
}));

// SCIMMYRouters sets patch/filter support in its constructor; the options override it.
if (PATCH_UNSUPPORTED && !PATCH_ADVERTISED) SCIMMY.Config.set("patch", false);
if (FILTER_UNSUPPORTED) SCIMMY.Config.set("filter", false);

const server = app.listen(PORT, "127.0.0.1", () => {
  console.log(`listening http://127.0.0.1:${server.address().port}/scim/v2`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
// Exit when the test that started the server goes away (its end of stdin closes).
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
