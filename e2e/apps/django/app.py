"""A Django app using Django's own auth views, behind Headcount in the end-to-end tests.

    python app.py --port N --db PATH

Django's `LoginView` (CSRF-protected form; `UsernameField` strips and NFKC-normalizes the typed
name; a repeated field: the last value wins) redirects to /app/ on success and re-renders the form
(200) on failure; `LogoutView` (POST). GET /me answers who the session is, as JSON (401: nobody);
GET /healthz. Users alice (admin), bob (student), carol (teacher), password "pw-<name>".

An API with Django REST framework's `TokenAuthentication`: POST /api/token/ (`obtain_auth_token`,
answers {"token": "..."}), then `Authorization: Token <token>`: GET /api/me (as /me), POST
/api/logout/ (deletes the token, 204).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import django
from django.conf import settings

USERS = {"alice": "admin", "bob": "student", "carol": "teacher"}

LOGIN_TEMPLATE = """<form method="post">{% csrf_token %}{{ form.as_p }}<button>Log in</button></form>
{% if form.errors %}<p class="failed">failed</p>{% endif %}"""


def configure(db: Path) -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="headcount-e2e-django",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions",
                        "rest_framework", "rest_framework.authtoken"],
        REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": [
            "rest_framework.authentication.TokenAuthentication"]},
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader",
                                     {"registration/login.html": LOGIN_TEMPLATE})],
                        "context_processors": ["django.template.context_processors.csrf"]},
        }],
        LOGIN_REDIRECT_URL="/app/",
        LOGOUT_REDIRECT_URL="/login/",
        # Test speed only: the default PBKDF2 costs ~0.3 s per login on this machine.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        USE_TZ=True,
    )
    django.setup()


def views():
    from django.contrib.auth import views as auth_views
    from django.http import HttpResponse, JsonResponse
    from django.urls import path

    def healthz(_request):
        return HttpResponse("ok", content_type="text/plain")

    def app_page(request):
        if not request.user.is_authenticated:
            return HttpResponse(status=302, headers={"Location": "/login/"})
        return HttpResponse(f"<h1>Hello {request.user.username}</h1>")

    def me(request):
        user = request.user
        if not user.is_authenticated:
            return JsonResponse({"error": "not logged in"}, status=401)
        group = user.groups.first()
        return JsonResponse({"user": {"id": str(user.pk), "username": user.username,
                                      "role": group.name if group else None}})

    from rest_framework.authtoken.models import Token
    from rest_framework.authtoken.views import obtain_auth_token
    from rest_framework.decorators import api_view
    from rest_framework.response import Response

    @api_view(["GET"])
    def api_me(request):
        if not request.user.is_authenticated:
            return Response({"error": "not logged in"}, status=401)
        return me(request)

    @api_view(["POST"])
    def api_logout(request):
        if not request.user.is_authenticated:
            return Response(status=401)
        Token.objects.filter(user=request.user).delete()
        return Response(status=204)

    return [
        path("api/token/", obtain_auth_token),
        path("api/me", api_me),
        path("api/logout/", api_logout),
        path("healthz", healthz),
        path("login/", auth_views.LoginView.as_view()),
        path("logout/", auth_views.LogoutView.as_view()),
        path("app/", app_page),
        path("me", me),
    ]


def seed() -> None:
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    for name, role in USERS.items():
        user, _ = User.objects.get_or_create(username=name)
        user.set_password(f"pw-{name}")
        user.save()
        user.groups.add(Group.objects.get_or_create(name=role)[0])


urlpatterns: list = []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, default=Path(tempfile.mkdtemp()) / "db.sqlite3")
    args = parser.parse_args()
    configure(args.db)
    urlpatterns.extend(views())
    seed()
    from django.core.management import call_command

    sys.stdout.flush()
    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False, use_threading=True)


if __name__ == "__main__":
    main()
