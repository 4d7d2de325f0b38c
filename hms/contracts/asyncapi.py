"""An AsyncAPI 3 document of the mesh, generated from the contracts and the HMS-SYS-AUTH policy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import HERE, Contracts

ENVELOPE = ("specversion", "id", "source", "type", "time")


def _key(text: str) -> str:
    """An AsyncAPI component key (letters, digits, - and _ only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def asyncapi(contracts: Contracts | None = None, policy_file: Path = HERE / "policy" / "mesh.json") -> dict[str, Any]:
    """The AsyncAPI 3.0 document: channels per subject, messages per contract version, operations per service."""
    contracts = contracts or Contracts()
    services = json.loads(policy_file.read_text())["services"]
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for (subject, version), schema in sorted(contracts.schemas.items()):
        name = _key(f"{subject}.v{version}")
        messages[name] = {
            "name": f"{subject}.v{version}",
            "title": schema.get("title", subject),
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "the event id (JetStream de-duplication)"},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                    "Hms-Sys-Auth": {"type": "string", "description": "the sender's HMS-SYS-AUTH service token"},
                },
            },
            "payload": {
                "type": "object",
                "description": "CloudEvents 1.0 envelope",
                "required": [*ENVELOPE, "data"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "id": {"type": "string"},
                    "source": {"type": "string"},
                    "type": {"const": f"gov.hms.{subject}.v{version}"},
                    "time": {"type": "string", "format": "date-time"},
                    "traceparent": {"type": "string"},
                    "datacontenttype": {"const": "application/json"},
                    "data": {k: v for k, v in schema.items() if k not in ("$schema", "$id")},
                },
            },
        }
        channel = channels.setdefault(_key(subject), {"address": subject, "messages": {}})
        channel["messages"][name] = {"$ref": f"#/components/messages/{name}"}
    operations: dict[str, Any] = {}
    for service, rules in sorted(services.items()):
        for verb, action in (("publish", "send"), ("subscribe", "receive"), ("serve", "receive"), ("request", "send")):
            for subject in rules.get(verb, []):
                if _key(subject) not in channels:
                    continue
                op: dict[str, Any] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{_key(subject)}"},
                    "summary": f"{service} {verb}s {subject}",
                    "tags": [{"name": service}],
                }
                if verb in ("serve", "request"):
                    op["reply"] = {
                        "address": {
                            "location": "$message.header#/reply_to",
                            "description": "the requester's inbox (NATS request/reply)",
                        }
                    }
                operations[_key(f"{service}.{verb}.{subject}")] = op
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "HMS payout mesh",
            "version": "1.0.0",
            "description": "Events and request/reply subjects of the mesh. Every message is a CloudEvents "
            "envelope validated against its JSON Schema on publish and on consume.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "JetStream stream HMS_EVENTS for claim.> and payment.>",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def snapshot(contracts: Contracts | None = None) -> dict[str, dict[str, Any]]:
    """Every contract by `<subject>.v<N>`, as `hms contracts lock` records them."""
    contracts = contracts or Contracts()
    return {f"{s}.v{v}": schema for (s, v), schema in sorted(contracts.schemas.items())}
