"""Identity's aggregates folded from their streams (pure): what each event changes, and the
streams that make no aggregate (a wrong first event, an event out of place)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.aggregates import UnfoldableStream, fold
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.identity import (
    AccountCreated,
    AccountDisabled,
    AccountEnabled,
    AccountRoleChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    EmailVerified,
    SsoConnectionChanged,
)
from tenantry_identity.domain import Account, ApiKey
from tenantry_identity.sso.domain import SsoConnection

TENANT = uuid4()


def stream(subject: UUID | str, *payloads: msgspec.Struct) -> list[Envelope[Any]]:
    return [
        new_event(
            payload,
            tenant_id=TENANT,
            subject=str(subject),
            aggregate_version=version,
            source="/tenantry/identity",
            region="local",
        )
        for version, payload in enumerate(payloads, start=1)
    ]


def test_an_account_folds_status_role_and_verification() -> None:
    account_id = uuid4()
    created = AccountCreated(
        account_id=account_id,
        email="ada@example.com",
        role="admin",
        status="active",
        email_verified=False,
        created_by="op",
    )
    events = stream(
        account_id,
        created,
        AccountDisabled(account_id=account_id, reason="left", disabled_by="op"),
        AccountRoleChanged(
            account_id=account_id, role="member", previous_role="admin", changed_by="sso"
        ),
        EmailVerified(account_id=account_id, email="ada@example.com"),
        AccountEnabled(account_id=account_id, enabled_by="scim"),
    )
    assert fold(Account.start, events[:2]) == Account(
        account_id=account_id,
        tenant_id=TENANT,
        email="ada@example.com",
        role="admin",
        status="disabled",
        email_verified=False,
        version=2,
    )
    folded = fold(Account.start, events)
    assert folded is not None
    assert (folded.status, folded.role, folded.email_verified, folded.version) == (
        "active",
        "member",
        True,
        5,
    )


def test_an_api_key_is_revoked_once() -> None:
    created = ApiKeyCreated(
        key_id="key_1",
        key_sha256="ab" * 32,
        display_prefix="tnt_live_ab",
        name="ci",
        kind="service",
        owner_account_id=None,
        scopes=["tenant:read"],
        expires_at=None,
        created_by="op",
    )
    revoked = ApiKeyRevoked(key_id="key_1", key_sha256="ab" * 32, reason="r", revoked_by="op")
    folded = fold(ApiKey.start, stream("key_1", created, revoked))
    assert folded is not None
    assert (folded.revoked, folded.version, folded.scopes) == (True, 2, ("tenant:read",))
    with pytest.raises(UnfoldableStream, match=r"cannot apply apikey\.revoked"):
        fold(ApiKey.start, stream("key_1", created, revoked, revoked))


def connection_changed(connection_id: UUID, change: str, **fields: Any) -> SsoConnectionChanged:
    values = {"kind": "saml", "name": "Okta", "enabled": True, "changed_by": "op", **fields}
    return SsoConnectionChanged(connection_id=connection_id, change=change, **values)  # type: ignore[arg-type]


def test_an_sso_connection_folds_its_changes_and_ends_with_its_deletion() -> None:
    connection_id = uuid4()
    created = connection_changed(connection_id, "created")
    renamed = connection_changed(connection_id, "updated", name="Okta (prod)", enabled=False)
    deleted = connection_changed(connection_id, "deleted", name="Okta (prod)", enabled=False)
    folded = fold(SsoConnection.start, stream(connection_id, created, renamed))
    assert folded is not None
    assert (folded.name, folded.enabled, folded.version, folded.keeps_row()) == (
        "Okta (prod)",
        False,
        2,
        True,
    )
    gone = fold(SsoConnection.start, stream(connection_id, created, renamed, deleted))
    assert gone is not None
    assert not gone.keeps_row()
    with pytest.raises(UnfoldableStream, match=r"cannot apply sso\.connection_changed"):
        fold(SsoConnection.start, stream(connection_id, created, deleted, renamed))
    with pytest.raises(UnfoldableStream, match="starts with its creation, not 'updated'"):
        fold(SsoConnection.start, stream(connection_id, renamed))


@pytest.mark.parametrize(
    ("start", "first"),
    [
        (Account.start, AccountEnabled(account_id=uuid4(), enabled_by="op")),
        (ApiKey.start, EmailVerified(account_id=uuid4(), email="a@example.com")),
    ],
)
def test_a_stream_that_does_not_start_with_the_creation_makes_nothing(
    start: Any, first: msgspec.Struct
) -> None:
    with pytest.raises(UnfoldableStream, match=r"stream starts with (account|apikey)\.created"):
        fold(start, stream(uuid4(), first))
