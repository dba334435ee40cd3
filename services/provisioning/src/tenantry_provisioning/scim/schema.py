"""The SCIM resource schemas this server serves (RFC 7643), described once.

Every other SCIM module derives what it needs from here: PATCH (types, mutability,
caseExact, required), the filter's SQL back end (where each attribute is stored), the
resource mapping (which columns a User's attributes fill) and discovery (/Schemas). The
URNs are defined here and nowhere else.

Storage: `column` names the scim_users/scim_groups column (or, for a sub-attribute of a
multi-valued attribute kept as a jsonb array, nothing: the element's key); a multi-valued
attribute without a column and not `joined` is kept in the row's `extra` jsonb as sent;
an extension's attributes are keys of the extension's jsonb column. `joined` attributes
are rows of another table (group membership).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "BULK_REQUEST_URN",
    "BULK_RESPONSE_URN",
    "ENTERPRISE_USER_URN",
    "ENTRA_GROUP_URN",
    "ERROR_URN",
    "GROUP_SCHEMA",
    "GROUP_URN",
    "LIST_RESPONSE_URN",
    "PATCH_OP_URN",
    "RESOURCE_TYPE_URN",
    "SCHEMA_URN",
    "SEARCH_URN",
    "SERVICE_PROVIDER_CONFIG_URN",
    "USER_SCHEMA",
    "USER_URN",
    "Attribute",
    "AttributeType",
    "Extension",
    "JoinedRows",
    "Mutability",
    "ResourceSchema",
]

# Resource schemas.
USER_URN: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN: Final = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER_URN: Final = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
# Entra ID's extra group schema: accepted in requests, never kept.
ENTRA_GROUP_URN: Final = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
# Messages (RFC 7644 §3).
LIST_RESPONSE_URN: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR_URN: Final = "urn:ietf:params:scim:api:messages:2.0:Error"
PATCH_OP_URN: Final = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_URN: Final = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
BULK_REQUEST_URN: Final = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE_URN: Final = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
# Discovery (RFC 7643 §5-7).
SERVICE_PROVIDER_CONFIG_URN: Final = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_URN: Final = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_URN: Final = "urn:ietf:params:scim:schemas:core:2.0:Schema"

AttributeType: TypeAlias = Literal[
    "string", "boolean", "decimal", "integer", "dateTime", "reference", "binary", "complex"
]
Mutability: TypeAlias = Literal["readWrite", "readOnly", "immutable", "writeOnly"]


@dataclass(frozen=True)
class JoinedRows:
    """A multi-valued attribute kept as rows of another table: the SQL FROM item yielding
    them as `{e}`, the condition tying them to the resource row `{t}`, and the ORDER BY
    that picks the value to sort by."""

    source: str
    link: str
    sort_pick: str


@dataclass(frozen=True)
class Attribute:
    """One attribute definition (RFC 7643 §7) and where the store keeps it."""

    name: str
    type: AttributeType = "string"
    multi_valued: bool = False
    sub_attributes: tuple[Attribute, ...] = ()
    case_exact: bool = False
    mutability: Mutability = "readWrite"
    required: bool = False
    # multi-valued complex only: the sub-attribute that identifies an element (members: value)
    unique_by: str | None = None
    # Storage (module docstring). `column` is a column name, or a SQL expression over the
    # element `{e}` for the sub-attributes of `joined` rows.
    column: str | None = None
    joined: JoinedRows | None = None
    # A UUID: its canonical text is lower-case and RFC 4122 input is case-insensitive, so
    # queries compare it case-insensitively whatever `case_exact` says.
    uuid: bool = False
    # Discovery (/Schemas): whether to list it, RFC 7643 `uniqueness` and `referenceTypes`,
    # and what /Schemas has always said where that differs from what PATCH enforces.
    advertised: bool = True
    uniqueness: Literal["none", "server", "global"] = "none"
    reference_types: tuple[str, ...] = ()
    advertised_as: Mapping[str, Any] = field(default_factory=dict)
    _subs: Mapping[str, Attribute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.type == "complex") != bool(self.sub_attributes):
            raise ValueError(f"{self.name}: complex attributes, and only they, have sub-attributes")
        subs = {sub.name.lower(): sub for sub in self.sub_attributes}
        if self.unique_by is not None and self.unique_by.lower() not in subs:
            raise ValueError(f"{self.name}: unique_by names no sub-attribute")
        object.__setattr__(self, "_subs", subs)

    @property
    def is_complex(self) -> bool:
        return self.type == "complex"

    def sub(self, name: str) -> Attribute | None:
        """The sub-attribute called `name`, case-insensitively."""
        return self._subs.get(name.lower())


@dataclass(frozen=True)
class Extension:
    """A schema's attributes under one schema URN (the core schema is one too)."""

    urn: str
    attributes: tuple[Attribute, ...]
    name: str = ""  # the /Schemas name
    column: str | None = None  # the jsonb column an extension's attributes are kept in
    _by_name: Mapping[str, Attribute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {a.name.lower(): a for a in self.attributes})

    def attribute(self, name: str) -> Attribute | None:
        return self._by_name.get(name.lower())


@dataclass(frozen=True)
class ResourceSchema:
    """A resource type: core attributes, extensions, and schema URNs to accept and ignore."""

    name: str
    core_urn: str
    attributes: tuple[Attribute, ...]
    extensions: tuple[Extension, ...] = ()
    ignored_schemas: tuple[str, ...] = ()
    core: Extension = field(init=False, repr=False, compare=False)
    _scopes: tuple[Extension, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        core = Extension(self.core_urn, self.attributes, self.name)
        object.__setattr__(self, "core", core)
        scopes = sorted((core, *self.extensions), key=lambda s: len(s.urn), reverse=True)
        object.__setattr__(self, "_scopes", tuple(scopes))

    def attribute(self, name: str) -> Attribute | None:
        """A core attribute by name, case-insensitively."""
        return self.core.attribute(name)

    def extension(self, urn: str) -> Extension | None:
        return next((e for e in self.extensions if e.urn.lower() == urn.lower()), None)

    @property
    def scopes(self) -> tuple[Extension, ...]:
        """The core schema and the extensions, longest URN first (for prefix matching)."""
        return self._scopes


def _s(name: str, **kw: Any) -> Attribute:
    return Attribute(name, "string", **kw)


def _complex(name: str, *subs: Attribute, **kw: Any) -> Attribute:
    return Attribute(name, "complex", sub_attributes=subs, **kw)


def _plural(name: str, *subs: Attribute, **kw: Any) -> Attribute:
    return Attribute(name, "complex", multi_valued=True, sub_attributes=subs, **kw)


def _plural_subs(value: Attribute | None = None) -> tuple[Attribute, ...]:
    return (
        value or _s("value"),
        _s("display"),
        _s("type"),
        Attribute("primary", "boolean"),
    )


def _meta() -> Attribute:
    return _complex(
        "meta",
        Attribute("created", "dateTime", mutability="readOnly", column="created_at"),
        Attribute("lastModified", "dateTime", mutability="readOnly", column="updated_at"),
        _s("resourceType", case_exact=True, mutability="readOnly"),
        Attribute("location", "reference", case_exact=True, mutability="readOnly"),
        _s("version", case_exact=True, mutability="readOnly"),
        mutability="readOnly",
        advertised=False,
    )


def _id() -> Attribute:
    return _s(
        "id", case_exact=True, mutability="readOnly", column="id", uuid=True, advertised=False
    )


def _extra(name: str, *subs: Attribute) -> Attribute:
    """A core attribute without a column of its own: kept in `extra` as sent, not listed in
    /Schemas."""
    return _plural(name, *subs, advertised=False)


# The order of attributes and sub-attributes is the order /Schemas lists them in.
USER_SCHEMA: Final = ResourceSchema(
    name="User",
    core_urn=USER_URN,
    attributes=(
        _id(),
        _s("userName", required=True, column="user_name", uniqueness="server"),
        _s("externalId", case_exact=True, column="external_id"),
        _meta(),
        _complex(
            "name",
            _s("formatted", column="name_formatted"),
            _s("familyName", column="name_family"),
            _s("givenName", column="name_given"),
            _s("middleName", column="name_middle"),
            _s("honorificPrefix", column="name_prefix"),
            _s("honorificSuffix", column="name_suffix"),
        ),
        _s("displayName", column="display_name"),
        _s("nickName", column="nick_name"),
        # RFC 7643 types it a reference; /Schemas has always said string.
        Attribute(
            "profileUrl", "reference", column="profile_url", advertised_as={"type": "string"}
        ),
        _s("title", column="title"),
        _s("userType", column="user_type"),
        _s("preferredLanguage", column="preferred_language"),
        _s("locale", column="locale"),
        _s("timezone", column="timezone"),
        Attribute("active", "boolean", column="active"),
        _s("password", case_exact=True, mutability="writeOnly", advertised=False),
        _plural("emails", *_plural_subs(), column="emails"),
        _plural("phoneNumbers", *_plural_subs(), column="phone_numbers"),
        _plural(
            "addresses",
            # value and display are not in RFC 7643's addresses, but common client models
            # (scim2-models) send them: kept, so what a client sets reads back.
            _s("value"),
            _s("display"),
            _s("type"),
            Attribute("primary", "boolean"),
            _s("formatted"),
            _s("streetAddress"),
            _s("locality"),
            _s("region"),
            _s("postalCode"),
            _s("country"),
            column="addresses",
        ),
        _plural("roles", *_plural_subs(), column="roles"),
        _plural(
            "groups",
            _s("value", mutability="readOnly", column="{e}.group_id::text", uuid=True),
            _s(
                "display",
                mutability="readOnly",
                column=(
                    "(SELECT scim_g.display_name FROM scim_groups AS scim_g "
                    "WHERE scim_g.id = {e}.group_id)"
                ),
            ),
            Attribute(
                "$ref",
                "reference",
                case_exact=True,
                mutability="readOnly",
                reference_types=("Group",),
            ),
            _s("type", mutability="readOnly", advertised=False),
            mutability="readOnly",
            joined=JoinedRows(
                source="scim_group_members AS {e}",
                link="{e}.member_id = {t}id",
                sort_pick="{e}.group_id",
            ),
        ),
        _extra("ims", *_plural_subs()),
        _extra("photos", *_plural_subs(Attribute("value", "reference", case_exact=True))),
        _extra("entitlements", *_plural_subs()),
        _extra("x509Certificates", *_plural_subs(Attribute("value", "binary", case_exact=True))),
    ),
    extensions=(
        Extension(
            ENTERPRISE_USER_URN,
            (
                _s("employeeNumber"),
                _s("costCenter"),
                _s("organization"),
                _s("division"),
                _s("department"),
                _complex(
                    "manager",
                    _s("value"),
                    _s("displayName", mutability="readOnly"),
                    Attribute("$ref", "reference", case_exact=True, advertised=False),
                ),
            ),
            name="EnterpriseUser",
            column="enterprise",
        ),
    ),
)

GROUP_SCHEMA: Final = ResourceSchema(
    name="Group",
    core_urn=GROUP_URN,
    attributes=(
        _id(),
        _s("displayName", required=True, column="display_name"),
        _s("externalId", case_exact=True, column="external_id"),
        _meta(),
        _plural(
            "members",
            _s(
                "value",
                case_exact=True,
                mutability="immutable",
                required=True,
                column="{e}.member_id::text",
                uuid=True,
                # PATCH compares a member's id exactly and needs one; /Schemas has always
                # said neither.
                advertised_as={"caseExact": False, "required": False},
            ),
            Attribute(
                "$ref",
                "reference",
                case_exact=True,
                mutability="immutable",
                reference_types=("User",),
            ),
            # Not in RFC 7643 §8.7.1, but every client sends it (Okta, RFC 7644 examples).
            _s(
                "display",
                column=(
                    "(SELECT coalesce(scim_u.display_name, scim_u.user_name) "
                    "FROM scim_users AS scim_u WHERE scim_u.id = {e}.member_id)"
                ),
            ),
            # Groups hold users only (groups of groups are not supported).
            _s(
                "type",
                mutability="immutable",
                column="'User'::text",
                advertised_as={"mutability": "readWrite"},
            ),
            unique_by="value",
            joined=JoinedRows(
                source="scim_group_members AS {e}",
                link="{e}.group_id = {t}id",
                sort_pick="{e}.member_id",
            ),
        ),
    ),
    ignored_schemas=(ENTRA_GROUP_URN,),
)
