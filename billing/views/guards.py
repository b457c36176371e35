"""Small guards that ``abort()`` when a request may not go on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import abort, current_app
from flask_login import current_user, login_required

from billing.models import Reader, StaffRole
from billing.services.entitlements import Decision, decide

F = TypeVar("F", bound=Callable[..., Any])


def reader() -> Reader:
    """The logged-in reader (use inside ``login_required`` views)."""
    return cast(Reader, current_user._get_current_object())


def staff_required(*roles: StaffRole) -> Callable[[F], F]:
    """Allow only staff with one of ``roles`` (admins always); others get 403, guests the login."""

    def decorator(view: F) -> F:
        @wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            role = reader().staff_role
            if role != StaffRole.ADMIN and role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorator


def safe_next(target: str | None, default: str) -> str:
    """A local path to go to after login; anything that could leave the site becomes ``default``.

    Only a path on this site qualifies: it starts with one ``/``, has no scheme or host once
    parsed, and no backslash or control character (which browsers may read as ``/``).
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch == "\\" or ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def decision_for(reader: Reader | None, now: datetime, ip: str | None = None) -> Decision:
    """The entitlement decision, with the app's past-due grace: how pages ask ``decide``; an
    anonymous visitor's by their address, from the office networks of groups."""
    if reader is None and ip is not None:
        from billing import db
        from billing.services import decision_cache

        return decision_cache.current().lookup_ip(db.session(), ip, now)
    grace = timedelta(days=int(current_app.config["PAST_DUE_GRACE_DAYS"]))
    return decide(reader, now, ip, past_due_grace=grace)
