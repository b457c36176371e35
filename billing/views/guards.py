"""Small guards that ``abort()`` when a request may not go on."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import abort
from flask_login import current_user, login_required

from billing.models import Reader, StaffRole

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
    """A local path to go to after login; anything that could leave the site becomes ``default``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch in target for ch in "\\\r\n\t") or "://" in target:
        return default
    return target
