"""Hypothesis strategies for hostile SAML messages, made from genuine ones.

A parser fuzzed with random bytes mostly tests the XML parser's first line. These start
from real messages (`SamlIdp` responses, logout requests and responses) and damage them the
ways that reach deeper code: an element's text or an attribute replaced, an element
dropped, duplicated or moved, bytes cut or inserted anywhere, then the binding's encoding
(base64 for HTTP-POST, deflate + base64 for HTTP-Redirect) applied, skipped or broken too.

    @given(value=saml_fuzz.post_values([good_xml]))
    def test_acs(value): ...            # value is a SAMLResponse form field

    @given(query=saml_fuzz.redirect_queries(signed_query, "SAMLRequest"))
    def test_slo(query): ...            # query is the SLO endpoint's parameters
"""

from __future__ import annotations

import base64
import copy
import zlib
from collections.abc import Sequence

from hypothesis import strategies as st
from lxml import etree

from tenantry_testkit.saml_idp import inflate_b64, parse_xml

# Text that upsets SAML readers: empty, huge, not a date, not an id, markup-ish, non-ASCII.
_AWKWARD_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "x" * 5000,
            "9999-12-31T23:59:59Z",
            "0000-00-00T00:00:00Z",
            "-1",
            "#",
            "urn:oasis:names:tc:SAML:2.0:status:Success",
            "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
            "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        ]
    ),
    st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        max_size=40,
    ),
)


def _xml_safe(text: str) -> str:
    """lxml refuses control characters in text; keep what XML 1.0 allows."""
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


@st.composite
def _tree_edit(draw: st.DrawFn, xml: str) -> str:
    root = parse_xml(xml)
    elements = list(root.iter())
    target = elements[draw(st.integers(0, len(elements) - 1))]
    action = draw(st.sampled_from(["text", "attribute", "drop", "duplicate", "move"]))
    parent = target.getparent()
    if action == "text" or (parent is None and action in ("drop", "duplicate", "move")):
        target.text = _xml_safe(draw(_AWKWARD_TEXT))
    elif action == "attribute":
        names = sorted({name for e in elements for name in e.attrib}) or ["ID"]
        name = draw(st.sampled_from(names))
        if draw(st.booleans()):
            target.set(name, _xml_safe(draw(_AWKWARD_TEXT)))
        else:
            target.attrib.pop(name, None)
    elif action == "drop":
        parent.remove(target)
    elif action == "duplicate":
        parent.insert(parent.index(target), copy.deepcopy(target))
    else:
        others = [e for e in elements if e is not target and target not in e.iterancestors()]
        others = [e for e in others if e not in target.iter()]
        if others:
            destination = others[draw(st.integers(0, len(others) - 1))]
            parent.remove(target)
            destination.insert(draw(st.integers(0, len(destination))), target)
    return str(etree.tostring(root, encoding="unicode"))


def _byte_edits(source: bytes) -> st.SearchStrategy[bytes]:
    edit = st.tuples(st.integers(0, len(source)), st.integers(0, 64), st.binary(max_size=24))

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(source)
        for at, cut, insert in edits:
            at = min(at, len(data))
            data[at : at + cut] = insert
        return bytes(data)

    return st.lists(edit, min_size=1, max_size=6).map(apply)


def xml_mutations(xml: str) -> st.SearchStrategy[bytes]:
    """`xml` damaged: one to three tree edits (still well-formed), or byte edits (mostly
    not), as the bytes a binding would carry."""
    tree_edits: st.SearchStrategy[str] = _tree_edit(xml)
    for _ in range(2):
        tree_edits = st.one_of(tree_edits, tree_edits.flatmap(_tree_edit))
    return st.one_of(tree_edits.map(str.encode), _byte_edits(xml.encode()))


_GARBAGE = st.one_of(
    st.text(max_size=200).filter(lambda s: "\x00" not in s),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "=", "====", "PD94bWw", "%%%", "PHg+" * 3, "\u00e9\u00e9=="]),
)


def post_values(xmls: Sequence[str]) -> st.SearchStrategy[str]:
    """SAMLResponse form values for the HTTP-POST binding: a damaged message base64'd
    (sometimes with its base64 damaged too), or garbage."""
    damaged = st.one_of(*(xml_mutations(x) for x in xmls))
    encoded = damaged.map(lambda b: base64.b64encode(b).decode())
    broken = st.tuples(encoded, st.integers(0, 400), st.text(max_size=4)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    )
    return st.one_of(encoded, encoded, broken, _GARBAGE)


def redirect_queries(query: dict[str, str], message: str) -> st.SearchStrategy[dict[str, str]]:
    """Query parameters for the HTTP-Redirect binding, from a genuine (signed) `query`
    whose `message` parameter is SAMLRequest or SAMLResponse: the message damaged and
    re-deflated (its signature then fails), its encoding broken (not deflated, not
    base64), or another parameter (Signature, SigAlg, RelayState) damaged or dropped."""
    xml = inflate_b64(query[message]).decode()

    def with_message(value: str) -> dict[str, str]:
        return {**query, message: value}

    deflated = xml_mutations(xml).map(lambda b: with_message(_deflate_bytes(b)))
    not_deflated = xml_mutations(xml).map(lambda b: with_message(base64.b64encode(b).decode()))
    garbage = _GARBAGE.map(with_message)
    others = [k for k in query if k != message]

    @st.composite
    def other_damaged(draw: st.DrawFn) -> dict[str, str]:
        changed = dict(query)
        name = draw(st.sampled_from(others))
        if draw(st.booleans()):
            changed.pop(name)
        else:
            changed[name] = draw(_GARBAGE)
        return changed

    strategies: list[st.SearchStrategy[dict[str, str]]] = [deflated, not_deflated, garbage]
    if others:
        strategies.append(other_damaged())
    return st.one_of(*strategies)


def _deflate_bytes(data: bytes) -> str:
    """The HTTP-Redirect encoding of any bytes (deflate_b64 takes text)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(compressor.compress(data) + compressor.flush()).decode()
