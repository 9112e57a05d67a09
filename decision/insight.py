"""``decision models`` and ``decision records``: what the learning loop knows, asked of a
running server over gRPC (``GetModel``, ``GetDecisionRecords``) like any client.

    decision models --address 127.0.0.1:50051 [--offer ID] [--channel web] [--json]
    decision records --address ... --decision-id ID | --since 10m [--limit N] [--json]
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone

import grpc
from google.protobuf import json_format

from decision.config.timing import duration_ms
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="what the learned models know (GetModel)")
    connection_args(models)
    models.add_argument("--offer", default="", help="one offer (default: every offer)")
    models.add_argument("--channel", default="", help="one channel's models")
    models.add_argument("--top", type=int, default=3, help="top features per offer")
    models.add_argument("--json", action="store_true", help="print the reply as JSON")
    models.set_defaults(run=cmd_models)
    records = sub.add_parser("records", help="decision records (GetDecisionRecords)")
    connection_args(records)
    records.add_argument("--decision-id", default="")
    records.add_argument("--since", default="1h", help="the last DURATION (default 1h)")
    records.add_argument("--limit", type=int, default=20)
    records.add_argument("--json", action="store_true", help="one JSON record per line")
    records.set_defaults(run=cmd_records)


def connection_args(parser) -> None:
    """--address, --token, --tls-ca: how a command reaches a server."""
    parser.add_argument("--address", default=DEFAULT_ADDRESS)
    parser.add_argument("--token", help="default: the DECISION_TOKEN environment variable")
    parser.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA")


def call(args, method: str, request, timeout: float = 30):
    """One RPC to the server ``connection_args`` named (a streamed reply as a list)."""
    token = args.token or os.environ.get("DECISION_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        reply = getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        return list(reply) if method == "GetDecisionRecords" else reply


def cmd_models(args) -> int:
    try:
        info = call(args, "GetModel", pb.GetModelRequest(
            offer_id=args.offer, channel=args.channel, top_features=args.top))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(info, preserving_proto_field_name=True))
        return 0
    print(render_models(info))
    return 0


def render_models(info: pb.ModelInfo) -> str:
    published = (datetime.fromtimestamp(info.published_at_ms / 1000, tz=timezone.utc)
                 .strftime("%Y-%m-%d %H:%M:%S UTC") if info.published_at_ms else "never")
    lines = [f"models {info.model_version} (catalog {info.catalog_version}), published "
             f"{published}",
             f"{info.examples} examples learned from {info.outcomes} outcomes; "
             f"{info.pending} impressions in their response window; {info.duplicates} "
             f"duplicates, {info.late} late, {info.unknown_decision} for unknown decisions",
             "shared model: " + ", ".join(f"{f.name} {f.weight:+.3f}"
                                          for f in info.shared_top_features), ""]
    header = (f"{'offer':<28} {'channel':<10} {'shown':>7} {'pos':>6} "
              f"{'propensity [95%]':>24} {'AUC':>6}  top features")
    lines.append(header)
    lines.append("-" * len(header))
    for o in sorted(info.offers, key=lambda o: (-o.impressions, o.offer_id, o.channel)):
        auc = f"{o.auc:.3f}" if o.auc_examples else "-"
        interval = f"{o.propensity:.2%} [{o.propensity_low:.2%}, {o.propensity_high:.2%}]"
        top = ", ".join(f"{f.name} {f.weight:+.2f}" for f in o.top_features)
        lines.append(f"{o.offer_id[:28]:<28} {o.channel or '(all)':<10} {o.impressions:>7} "
                     f"{o.positives:>6} {interval:>24} {auc:>6}  "
                     + ("prior only" if o.prior_only else top))
    return "\n".join(lines)


def cmd_records(args) -> int:
    if args.decision_id:
        request = pb.DecisionRecordsRequest(decision_id=args.decision_id)
    else:
        try:
            since = duration_ms(args.since, "--since")
        except CatalogError as exc:
            raise SystemExit(f"decision records: {exc}") from None
        now = int(time.time() * 1000)
        request = pb.DecisionRecordsRequest(from_ms=now - since, to_ms=now + 1,
                                            limit=args.limit)
    try:
        records = call(args, "GetDecisionRecords", request)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    for r in records:
        if args.json:
            print(json.dumps(json_format.MessageToDict(r, preserving_proto_field_name=True)))
            continue
        at = datetime.fromtimestamp(r.decided_at_ms / 1000, tz=timezone.utc)
        shown = ", ".join(f"{o.rank}. {o.offer_id} (p={o.probability:.3f})" for o in r.offers)
        arm = f" {r.experiment}/{r.arm}" if r.experiment or r.arm else ""
        print(f"{at:%H:%M:%S.%f}"[:-3] + f" {r.decision_id} {r.channel}{arm} {r.policy} "
              f"model {r.model_version or '-'}: {shown or 'no offer'}")
    return 0
