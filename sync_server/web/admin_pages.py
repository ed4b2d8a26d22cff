"""The administrators' and technicians' pages (`/admin/...`), for staff with the `admin` role.

    GET  /admin/sign-in        the admin front door (POST: username + password, CSRF checked)
    POST /admin/sign-out       ends this user's sessions
    GET  /admin/fleet          every terminal, failing and stale first (sync_server/fleet_status.py);
                               the same as `ykt fleet status`

Only reads today; the views format what fleet_status.py computes.
"""
from flask import Blueprint, g, redirect, render_template, request, url_for

from sync_server import db as dbmod, fleet_status
from sync_server.web import auth

admin_pages = Blueprint("admin_pages", __name__, url_prefix="/admin")
admin_pages.before_request(auth.check_csrf)
admin_required = auth.staff_required("admin")


@admin_pages.route("/sign-in", methods=("GET", "POST"))
def sign_in():
    return auth.staff_sign_in("admin", "admin/sign_in.html")


@admin_pages.post("/sign-out")
def sign_out():
    auth.end_staff_sessions(dbmod.get_db())
    return redirect(url_for("admin_pages.sign_in"))


@admin_pages.get("/")
@admin_required
def home():
    return redirect(url_for("admin_pages.fleet"))


@admin_pages.get("/fleet")
@admin_required
def fleet():
    try:
        stale_min = int(request.args.get("stale_min", fleet_status.STALE_AFTER_MS // 60000))
    except ValueError:
        stale_min = fleet_status.STALE_AFTER_MS // 60000
    stale_min = min(max(stale_min, 1), 7 * 24 * 60)
    rows = fleet_status.fleet(dbmod.get_db(), stale_after_ms=stale_min * 60000)
    lang = getattr(g, "lang", "zh")
    for row in rows:
        row["problem_texts"] = [fleet_status.problem_text(key, lang) for key in row["problems"]]
        row["since_text"] = fleet_status.since_text(row["since_sync_s"], lang)
    return render_template("admin/fleet.html", rows=rows, stale_min=stale_min,
                           failing=sum(1 for row in rows if row["problems"]))
