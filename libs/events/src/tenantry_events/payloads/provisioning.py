"""Events owned by the provisioning service (the SCIM directory).

They say what the tenant's identity provider did to its directory. Access follows from
identity's own events (account.disabled / account.enabled), which provisioning causes
through identity's API; these are for the SaaS product and the tenant's webhooks.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from tenantry_events.catalog import event


class DirectoryUser(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID  # the same id as the identity account
    user_name: str
    external_id: str | None
    active: bool
    display_name: str | None
    email: str | None  # the primary (or first) email


# What a directory user's events say of the person: sealed with the tenant's data key and
# the person's subject key (user_id is their account id).
USER_PERSONAL = ("user.user_name", "user.external_id", "user.display_name", "user.email")


@event(
    "user.provisioned",
    owner="provisioning",
    public=True,
    personal=USER_PERSONAL,
    person="user.user_id",
)
class UserProvisioned(msgspec.Struct, frozen=True, kw_only=True):
    """The identity provider created a user (SCIM POST /Users)."""

    user: DirectoryUser


@event(
    "user.updated",
    owner="provisioning",
    public=True,
    personal=USER_PERSONAL,
    person="user.user_id",
)
class UserUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """The identity provider changed a user's attributes (PUT or PATCH), or reactivated it."""

    user: DirectoryUser


@event(
    "user.deprovisioned",
    owner="provisioning",
    public=True,
    personal=USER_PERSONAL,
    person="user.user_id",
)
class UserDeprovisioned(msgspec.Struct, frozen=True, kw_only=True):
    """The user lost access: set inactive (`deleted` false; it stays readable) or deleted."""

    user: DirectoryUser
    deleted: bool


class DirectoryGroup(msgspec.Struct, frozen=True, kw_only=True):
    group_id: UUID
    display_name: str
    external_id: str | None


@event("group.created", owner="provisioning", public=True)
class GroupCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The identity provider pushed a new group."""

    group: DirectoryGroup


@event("group.updated", owner="provisioning", public=True)
class GroupUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """A group was renamed or its attributes changed."""

    group: DirectoryGroup


@event("group.deleted", owner="provisioning", public=True)
class GroupDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """A group was deleted; its memberships ended with it."""

    group: DirectoryGroup


@event("group.members_changed", owner="provisioning", public=True)
class GroupMembersChanged(msgspec.Struct, frozen=True, kw_only=True):
    """Users joined or left a group."""

    group: DirectoryGroup
    added: list[UUID]
    removed: list[UUID]
