"""The provisioning service's rules, pure (no I/O): what a SCIM User must be before it is
written, and the refusal every layer raises.

userName: 1 to USER_NAME_MAX_CHARS characters after NFC normalisation, any script, no
control characters. (Okta's usernames stop at 100 characters, Entra ID's
userPrincipalName at 113, its mail at 256.)

The SCIM protocol itself (schema, filter grammar, PATCH, messages, resource mapping) is
the scim package, pure as well; users.py and intents.py run these rules against Postgres
and identity.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from tenantry_provisioning.scim.resources import ResourceError, primary_email, user_columns

__all__ = [
    "USER_NAME_MAX_CHARS",
    "ScimError",
    "check_storable",
    "check_user_name",
    "checked_columns",
    "login_email",
    "taken",
]

USER_NAME_MAX_CHARS = 256


class ScimError(Exception):
    """A refusal with its HTTP `status`, RFC 7644 §3.12 `scim_type` and `detail` (the SCIM
    mount renders it as a SCIM Error, scim/errors.py)."""

    def __init__(
        self,
        status: int,
        detail: str,
        scim_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type
        self.headers = headers or {}


def checked_columns(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The scim_users columns of a full User, or a 400 SCIM Error naming the attribute."""
    try:
        columns = user_columns(resource)
    except ResourceError as exc:
        raise ScimError(400, str(exc), exc.scim_type) from None
    check_user_name(columns["user_name"], has_email=primary_email(columns) is not None)
    check_storable(columns)
    return columns


def check_user_name(user_name: str, *, has_email: bool) -> None:
    normal = unicodedata.normalize("NFC", user_name)
    if len(normal) > USER_NAME_MAX_CHARS:
        raise ScimError(
            400, f"userName is longer than {USER_NAME_MAX_CHARS} characters", "invalidValue"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in normal):
        raise ScimError(
            400, "userName cannot contain control characters (tab, line break, NUL)", "invalidValue"
        )
    if not has_email and any(c.isspace() for c in normal):
        raise ScimError(
            400,
            "userName is the login name of a user without an email and cannot contain spaces",
            "invalidValue",
        )


def check_storable(columns: Mapping[str, Any]) -> None:
    """Refuse what Postgres cannot store, naming where it is: NUL characters and text that
    is not Unicode (lone surrogates), in values and in keys, at any depth."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                raise ScimError(400, f"{path} contains a NUL character", "invalidValue")
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ScimError(400, f"{path} is not valid Unicode text", "invalidValue") from None
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(key, f"{path} (a key)")
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    for column, value in columns.items():
        walk(value, column)


def taken(user_name: str) -> ScimError:
    return ScimError(409, f"userName {user_name} exists", "uniqueness")


def login_email(columns: Mapping[str, Any]) -> str:
    """What identity names the account by: the primary email, else the userName."""
    return unicodedata.normalize("NFC", primary_email(columns) or columns["user_name"])
