"""Verify a tenant's audit log export against its hash chain (docs/audit.md).

Standard library only, so a customer can read it in a minute and run it anywhere:

    curl -H "Authorization: Bearer $KEY" \\
      "$TENANCY/v1/tenants/$TENANT/audit-events?format=ndjson&order=asc" > audit.ndjson
    curl -H "Authorization: Bearer $KEY" "$TENANCY/v1/tenants/$TENANT/audit-events/chain" \\
      > chain.json
    python tools/verify_audit_chain.py audit.ndjson --chain chain.json

For each entry, in order: `hash == sha256(bytes.fromhex(prev_hash) + record.encode())`,
`prev_hash` is the previous entry's `hash` (the first one's is the chain's `anchor_hash`),
`seq` counts up by one, and what the entry shows (action, target, outcome, seq, time,
actor) is what its `record` says. With `--chain`, the export must end at the chain's head;
keep a head you saw (`--head SEQ:HASH`) to prove a later log still extends it. The chain
answer's `signed` is the same head as a JWS signed with the region's document key
(/.well-known/document-jwks.json): keep it as proof of what the platform said.
Exit status 0 when everything holds, 1 with the first break otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from typing import Any

ZERO = "00" * 32


def check(
    entries: Iterable[dict[str, Any]], anchor: str, head: tuple[int, str] | None
) -> str | None:
    """The first break, or None."""
    prev_hash, prev_seq = anchor, None
    for entry in entries:
        link = entry["chain"]
        seq = entry["seq"]
        where = f"entry {seq} ({entry.get('id')})"
        if prev_seq is not None and seq != prev_seq + 1:
            return f"{where}: entry {prev_seq + 1} is missing"
        if link["prev_hash"] != prev_hash:
            return f"{where}: prev_hash is not the previous entry's hash"
        digest = hashlib.sha256(
            bytes.fromhex(link["prev_hash"]) + link["record"].encode()
        ).hexdigest()
        if digest != link["hash"]:
            return f"{where}: hash does not match the record"
        record = json.loads(link["record"])
        shown = {
            "seq": seq,
            "event_id": entry["id"],
            "action": entry["action"],
            "outcome": entry["outcome"],
            "occurred_at": entry["occurred_at"],
            "target": entry["target"],
            "actor_kind": entry["actor"]["kind"],
            "actor_id": entry["actor"].get("id"),
        }
        said = {
            "seq": record["seq"],
            "event_id": record["event_id"],
            "action": record["action"],
            "outcome": record["outcome"],
            "occurred_at": record["occurred_at"],
            "target": record["target"],
            "actor_kind": record["actor"]["kind"],
            "actor_id": record["actor"].get("id"),
        }
        if shown != said:
            return f"{where}: the entry shows something its record does not say"
        prev_hash, prev_seq = link["hash"], seq
    if head is not None:
        head_seq, head_hash = head
        if (prev_seq is not None and prev_seq != head_seq) or prev_hash != head_hash:
            return f"the log ends before the head {head_seq}:{head_hash}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", help="an NDJSON export made with order=asc")
    parser.add_argument("--chain", help="the saved answer of GET .../audit-events/chain")
    parser.add_argument("--head", help="SEQ:HASH, a head you kept from an earlier read")
    args = parser.parse_args(argv)
    anchor, head = ZERO, None
    if args.chain:
        with open(args.chain, encoding="utf-8") as f:
            chain = json.load(f)
        anchor, head = chain["anchor_hash"], (int(chain["head_seq"]), chain["head_hash"])
    with open(args.export, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    problem = check(entries, anchor, head)
    if problem is None and args.head:
        seq, _, digest = args.head.partition(":")
        kept = [e for e in entries if e["seq"] == int(seq)]
        if not kept or kept[0]["chain"]["hash"] != digest:
            problem = f"the log does not contain the head you kept ({args.head})"
    if problem is not None:
        print(f"BROKEN: {problem}")
        return 1
    print(f"OK: {len(entries)} entries, the chain holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
