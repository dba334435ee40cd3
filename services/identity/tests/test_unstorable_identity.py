"""What an IdP says signed in is checked before anything stores it: a NUL (Postgres text
refuses it) or a lone surrogate anywhere in the subject, session index or attributes is a
`malformed` refusal, not a 500 at the first INSERT."""

from __future__ import annotations

import pytest

from tenantry_identity.sso.domain import IdpIdentity, unstorable


def identity(**changes: object) -> IdpIdentity:
    fields: dict[str, object] = {
        "subject": "00u1abcd",
        "attributes": {"email": ["ada@example.com"], "groups": ["Admins", "Dev"]},
        "session_index": "_s1",
    }
    fields.update(changes)
    return IdpIdentity(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"subject": "sub\x00"}, "the subject"),
        ({"session_index": "\x00"}, "the session index"),
        ({"attributes": {"email": ["a\x00@example.com"]}}, "attribute 'email'"),
        ({"attributes": {"gro\x00ups": ["x"]}}, "an attribute name"),
        ({"attributes": {"name": ["\ud800"]}}, "attribute 'name'"),
    ],
)
def test_a_nul_or_a_lone_surrogate_anywhere_is_refused(
    changes: dict[str, object], where: str
) -> None:
    why = unstorable(identity(**changes))
    assert why is not None
    assert why.startswith(where)


def test_ordinary_identities_pass() -> None:
    assert unstorable(identity()) is None
    assert unstorable(identity(subject="ünïcødé 😀", session_index=None)) is None
