"""A Flask app with Flask-Login and its "remember me" cookie, behind Headcount in the e2e tests.

    python app.py --port N

POST /login (form: username, password, remember=yes) logs in with Flask-Login (`login_user(...,
remember=...)`): a `session` cookie, plus `remember_token` when asked. A browser that comes back
without its session cookie (closed and reopened) but with `remember_token` is logged in again by
Flask-Login on whatever page it opens, which sets a new `session` cookie there: an auto-login on an
ordinary page. GET /page (any page), GET /me (who the session is, as JSON; 401: nobody), GET
/healthz. Users alice (admin), bob (student), carol (teacher), password "pw-<name>".
"""

from __future__ import annotations

import argparse
import os

from flask import Flask, jsonify, redirect, request
from flask_login import LoginManager, UserMixin, current_user, login_user

ROLES = {"alice": "admin", "bob": "student", "carol": "teacher"}


class User(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name
        self.role = ROLES[name]


app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET", "headcount-e2e-flask")
login_manager = LoginManager(app)


@login_manager.user_loader
def load_user(user_id: str):
    return User(user_id) if user_id in ROLES else None


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/login")
def login():
    name = request.form.get("username", "")
    if name not in ROLES or request.form.get("password") != f"pw-{name}":
        return redirect("/login?failed=1")
    login_user(User(name), remember=request.form.get("remember") == "yes")
    return redirect("/page")


@app.get("/page")
def page():
    who = current_user.id if current_user.is_authenticated else "nobody"
    return f"<h1>Hello {who}</h1>"


@app.get("/me")
def me():
    if not current_user.is_authenticated:
        return jsonify(error="not logged in"), 401
    return jsonify(user={"id": current_user.id, "username": current_user.id, "role": current_user.role})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app.run(host="127.0.0.1", port=args.port, threaded=True)
