// An Express app as many are written: express-session with its defaults
// (`saveUninitialized: true`, the MemoryStore, cookie `connect.sid`), and a
// login that does not call `req.session.regenerate()`. So the session cookie is
// set on the first visit, and the login response sets none.
//
//   node app.js --port N
//
// Routes: GET / (any page; starts a session), GET /login (the form), POST
// /login (form fields `username`, `password`; 302 to /app, or to
// /login?failed=1), POST /login-held (the same, its body held until POST
// /release-logins), POST /logout (destroys the session, keeps no cookie
// header), GET /app (logged-in page), GET /me (who the session is, as JSON;
// 401 when nobody), GET /late-me (the same answer after 1 s), GET /slow-me
// (a redirect to /me after 2 s: a whoami that times out), GET /whoami-calls (how
// many /me requests came from Headcount), GET /healthz.
"use strict";

const express = require("express");
const session = require("express-session");

const USERS = {
  alice: { id: "u-1", role: "admin" },
  bob: { id: "u-2", role: "student" },
  carol: { id: "u-3", role: "teacher" },
};

function portArg() {
  const i = process.argv.indexOf("--port");
  const port = Number(i >= 0 ? process.argv[i + 1] : process.env.PORT);
  if (!Number.isInteger(port) || port <= 0) {
    console.error("usage: node app.js --port N");
    process.exit(2);
  }
  return port;
}

const app = express();
app.use(
  session({
    secret: process.env.SESSION_SECRET || "headcount-e2e-express",
    resave: false,
    saveUninitialized: true,
  }),
);
app.use(express.urlencoded({ extended: false }));

app.get("/healthz", (_req, res) => res.type("text").send("ok"));

app.get("/", (req, res) => {
  req.session.visits = (req.session.visits || 0) + 1;
  res.type("html").send("<h1>Welcome</h1><a href=/login>Log in</a>");
});

app.get("/login", (_req, res) => {
  res.type("html").send(
    '<form method=post action=/login><input name=username><input name=password type=password><button>Log in</button></form>',
  );
});

// The user the login form names, if the password fits; else redirects back.
function loggedIn(req, res) {
  const { username, password } = req.body || {};
  const user = typeof username === "string" && USERS[username];
  if (!user || password !== `pw-${username}`) {
    res.redirect("/login?failed=1");
    return null;
  }
  return username;
}

app.post("/login", (req, res) => {
  const username = loggedIn(req, res);
  if (!username) return;
  req.session.user = username;
  res.redirect("/app");
});

// POST /login-held: /login whose redirect's headers go out at once and whose
// body waits for POST /release-logins: a browser moves on at the headers.
const heldLogins = [];
app.post("/login-held", (req, res) => {
  const username = loggedIn(req, res);
  if (!username) return;
  req.session.user = username;
  req.session.save(() => {
    res.status(302).set("Location", "/app").type("html");
    res.flushHeaders();
    heldLogins.push(res);
  });
});

app.post("/release-logins", (_req, res) => {
  const held = heldLogins.splice(0);
  held.forEach((r) => r.end("<p>Found. Redirecting to /app</p>"));
  res.json({ released: held.length });
});

app.post("/logout", (req, res) => {
  req.session.destroy(() => res.redirect("/login"));
});

app.get("/app", (req, res) => {
  if (!req.session.user) return res.redirect("/login");
  res.type("html").send(`<h1>Hello ${req.session.user}</h1>`);
});

// How often Headcount asked who a session is (its calls say `headcount-whoami`).
let whoamiCalls = 0;
app.get("/whoami-calls", (_req, res) => res.json({ calls: whoamiCalls }));

function me(req, res) {
  if (req.get("user-agent") === "headcount-whoami") whoamiCalls += 1;
  const name = req.session.user;
  if (!name) return res.status(401).json({ error: "not logged in" });
  const user = USERS[name];
  res.json({ user: { id: user.id, username: name, role: user.role } });
}

app.get("/me", me);

// /me, answered after 1 s: an app slower to answer than several flushes.
app.get("/late-me", (req, res) => {
  setTimeout(() => me(req, res), 1000);
});

// /me, answered after 2 s: a whoami that times out.
app.get("/slow-me", (req, res) => {
  setTimeout(() => res.redirect(307, "/me"), 2000);
});

const port = portArg();
app.listen(port, "127.0.0.1", () => console.log(`express app on 127.0.0.1:${port}`));
