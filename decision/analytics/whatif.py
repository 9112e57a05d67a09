"""``decision whatif``: what a candidate catalog would have earned, from the records.

Off-policy evaluation by replay. For every recorded decision whose policy explored
(its record holds the eligible set and the logged probability of each choice), the
candidate's probability of choosing the logged first offer is computed by the same
kernels the server decides with (``kernels.replay``, over the candidate's plan for
that customer: its control group, experiment arm, exploration, levers, values and
model, with the store's learned models where the candidate learns), and the logged
reward (a click on that offer, or its conversion revenue) is reweighted: IPS,
self-normalised IPS and doubly robust estimates with bootstrap intervals, the
effective sample size and a support warning (``decision.analytics.ope``). The logging
policy's own value over the same decisions is printed beside it.

What a replay can evaluate: offer values and levers, the model (weights, the learning
settings), exploration, experiments and control groups, and removing offers. What it
cannot, and refuses with the reason: a changed feature list (the records hold the
vectors of the old one), added offers (no record ever showed them), changed
eligibility of an offer (rule, channels, placements, validity) or contact policies
(the records hold who was eligible then, not the fields a new rule would read).

The first slot is evaluated (the best offer of each answer); its reward is that
offer's response within the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decision.analytics import ope
from decision.analytics.export import ExportError, check_range
from decision.analytics.report import connect
from decision.config.catalog import Catalog
from decision.core.experiments import Planner
from decision.core.learning import Posterior
from decision.core.prepared import Prepared
from decision.core.recording import replay_facts
from kernels.replay import replay_first_slot

REWARDS = ("click", "conversion", "revenue")


@dataclass(frozen=True)
class WhatIfRequest:
    from_ms: int
    to_ms: int
    reward: str = "click"
    replicates: int = 200
    seed: int = 0


class Unevaluable(ExportError):
    """A candidate change a replay cannot evaluate (the message says why)."""


def check_candidate(candidate: Catalog, facts: dict[str, dict]) -> None:
    """Refuse what a replay of records made under ``facts`` (catalog version -> its
    ``replay_facts``) cannot evaluate."""
    mine = replay_facts(candidate)
    for version, logged in facts.items():
        if logged is None:
            raise Unevaluable(f"catalog version {version}: the records' catalog facts are "
                              "missing (recorded by an older server); they cannot be replayed")
        if logged["features"] != mine["features"]:
            raise Unevaluable(
                f"the candidate changes the feature list ({', '.join(mine['features'])}; "
                f"the records hold {', '.join(logged['features'])}): a replay needs the "
                "features the records were decided over. Keep the feature list, or "
                "evaluate the change live in an experiment")
        added = sorted(set(mine["eligibility"]) - set(logged["eligibility"]))
        if added:
            raise Unevaluable(
                f"the candidate adds offers no record ever showed ({', '.join(added[:5])}): "
                "a replay has no data on them. Try them in an experiment arm or with "
                "exploration, then evaluate")
        changed = sorted(o for o, d in mine["eligibility"].items()
                         if logged["eligibility"].get(o) != d)
        if changed:
            raise Unevaluable(
                f"the candidate changes the eligibility of {', '.join(changed[:5])} (rule, "
                "channels, placements or validity): the records hold who was eligible "
                "then, not the fields a new rule reads. Evaluate values, levers, the model "
                "and exploration, or run the rule change in an experiment")
        if logged["policies"] != mine["policies"]:
            raise Unevaluable("the candidate changes the contact policies: the records "
                              "hold who was eligible under the old ones")


def _logged(con, request: WhatIfRequest) -> dict:
    """The replayable decisions of the range with their first offer, its logged
    probability and reward; and how many were left out (greedy, no probabilities)."""
    from_ms, to_ms = request.from_ms, request.to_ms
    total, replayable = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE octet_length(support) > 0)
        FROM decisions WHERE decided_ms >= {from_ms} AND decided_ms < {to_ms}""").fetchall()[0]
    reward = {"click": "count(*) FILTER (WHERE o.kind = 'click') > 0",
              "conversion": "count(*) FILTER (WHERE o.kind = 'conversion') > 0",
              "revenue": "coalesce(sum(o.revenue) FILTER (WHERE o.kind = 'conversion'), 0)"
              }[request.reward]
    rows = con.sql(f"""
        WITH first AS (
            SELECT d.decision_id, d.profile_key, d.channel, d.catalog_version, d.features,
                   d.support, d.shown, s.offer_index, s.offer_id, s.probability
            FROM decisions d JOIN shown s ON s.decision_id = d.decision_id AND s.rank = 1
            WHERE d.decided_ms >= {from_ms} AND d.decided_ms < {to_ms}
              AND octet_length(d.support) > 0 AND s.probability > 0),
        r AS (SELECT f.decision_id, ({reward})::DOUBLE AS reward
              FROM first f LEFT JOIN outcomes o
                ON o.decision_id = f.decision_id AND o.offer_id = f.offer_id
              GROUP BY f.decision_id)
        SELECT f.*, r.reward FROM first f JOIN r USING (decision_id)
        ORDER BY f.decision_id""").to_arrow_table()
    return {"total": int(total), "replayable": int(replayable), "rows": _columns(rows)}


def _columns(table) -> dict[str, np.ndarray]:
    """Arrow columns as numpy: the features as one float32 matrix per row (a catalog
    version's vectors all have its feature count; rows of another length are padded
    out by ``_eligible``'s check), the support masks as bytes objects."""
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name == "features":
            lengths = column.value_lengths().to_numpy(zero_copy_only=False)
            values = column.flatten().to_numpy(zero_copy_only=False)
            f = int(lengths.max()) if len(lengths) else 0
            if len(lengths) and (lengths == f).all():
                out[name] = values.reshape(-1, f)
            else:
                out[name] = np.array([np.asarray(v, dtype=np.float32) for v in
                                      column.to_pylist()], dtype=object)
        elif name == "support":
            out[name] = np.array(column.to_pylist(), dtype=object)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def whatif(directory: Path, candidate: Catalog, store, request: WhatIfRequest) -> dict:
    """The candidate's estimated reward per decision over the range, beside the logging
    policy's, from the export ``directory`` (and the store's learned models)."""
    check_range(request.from_ms, request.to_ms)
    if request.reward not in REWARDS:
        raise ExportError(f"reward {request.reward!r}: one of {', '.join(REWARDS)}")
    con = connect(directory)
    try:
        logged = _logged(con, request)
        versions = sorted(set(logged["rows"]["catalog_version"].tolist()))
        facts = {v: json.loads(f) for v, f in con.execute(
            "SELECT catalog_version, any_value(facts) FROM catalogs GROUP BY 1").fetchall()
            if v in versions}
        tables = {v: [o for (o,) in con.execute(
            "SELECT offer_id FROM offers WHERE catalog_version = ? ORDER BY offer_index",
            [v]).fetchall()] for v in versions}
    finally:
        con.close()
    if logged["total"] == 0:
        raise ExportError("no decisions recorded in that time range")
    rows = logged["rows"]
    # a decision before the customer had a profile drew its arm from an identifier the
    # record does not keep: its plan under the candidate cannot be told
    known = rows["profile_key"] != 0
    rows = {k: v[known] for k, v in rows.items()}
    if not len(rows["decision_id"]):
        greedy, cold = logged["total"] - logged["replayable"], int((~known).sum())
        raise ExportError(
            f"none of the {logged['total']:,} decisions in that range can be replayed: "
            f"{greedy:,} hold no logged probabilities over an eligible set (decided "
            f"greedily, or before exploration was on) and {cold:,} were made before the "
            "customer had a profile (their arm cannot be told). Turn exploration on for a "
            "channel ([explore] in the catalog), let it record, then evaluate")
    check_candidate(candidate, {v: facts.get(v) for v in versions})
    target_p, q_logged, q_target = _replay(candidate, store, rows, tables)
    reward = rows["reward"].astype(np.float64)
    logged_p = rows["probability"].astype(np.float64)
    estimate = ope.estimate(reward, logged_p, target_p, q_logged, q_target,
                            replicates=request.replicates, seed=request.seed)
    baseline = ope.estimate(reward, logged_p, logged_p, replicates=request.replicates,
                            seed=request.seed)
    return {"candidate": str(candidate.path), "candidate_version": candidate.version,
            "reward": request.reward, "decisions": logged["total"],
            "replayed": len(reward),
            "left_out": logged["total"] - len(reward),
            "estimate": estimate, "logged_policy": baseline["ips"],
            "target_p": target_p, "decision_ids": rows["decision_id"]}


def _replay(candidate: Catalog, store, rows: dict, tables: dict[str, list[str]]):
    """The candidate's probability of each logged first offer, and the reward model's
    predictions, per plan (channel x arm) in one kernel call each."""
    prepared = Prepared(candidate)
    posterior = Posterior(candidate)
    with store.reader() as r:
        posterior.load(store.models(r._txn))
    served = posterior.served("whatif")
    planner = Planner(prepared, served if candidate.learning.enabled else None)
    visit_row = np.empty(len(candidate.offers), dtype=np.int32)
    visit_row[prepared.visit[0]] = np.arange(len(candidate.offers), dtype=np.int32)
    n = len(rows["decision_id"])
    target_p, q_logged, q_target = np.zeros(n), np.zeros(n), np.zeros(n)
    versions = rows["catalog_version"]
    for plan, members in _by_plan(planner, candidate, rows):
        members = members[np.argsort(versions[members], kind="stable")]
        q_visit = served.visits[candidate.learning.group_of(str(rows["channel"][members[0]]))]
        x, indptr, elig, logged = _eligible(rows, members, tables, candidate.offer_index,
                                            visit_row)
        t, ql, qt = replay_first_slot(
            x, indptr, elig, logged, rows["shown"][members].astype(np.int64),
            *_typed(plan.visit[5], plan.visit[6], plan.visit[4], plan.var_w, plan.var_b),
            int(plan.code), float(plan.param), *_typed(q_visit[5], q_visit[6]))
        target_p[members], q_logged[members], q_target[members] = t, ql, qt
    return target_p, q_logged, q_target


def _by_plan(planner: Planner, candidate: Catalog, rows: dict):
    """(plan, the decisions it decides) under the candidate: one plan per customer and
    channel (the control group, the arm), found once per distinct pair. Decisions on
    a channel the candidate does not serve, or in a control group that shows nothing,
    are left out: the candidate shows nothing there (probability 0)."""
    channels, channel_code = np.unique(rows["channel"].astype(str), return_inverse=True)
    pair = channel_code.astype(np.uint64) << np.uint64(48) | rows["profile_key"].astype(
        np.uint64)  # profile keys are far below 2^48
    pairs, inverse = np.unique(pair, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(pairs.shape[0] + 1))
    members: dict[int, list[np.ndarray]] = {}
    plans = {}
    for u in range(pairs.shape[0]):
        channel = str(channels[int(pairs[u] >> np.uint64(48))])
        if channel not in candidate.channels:
            continue
        plan = planner.plan(channel, f"{int(pairs[u] & np.uint64((1 << 48) - 1)):016x}")
        if plan.empty:
            continue
        plans[id(plan)] = plan
        members.setdefault(id(plan), []).append(order[bounds[u]:bounds[u + 1]])
    return [(plans[p], np.sort(np.concatenate(m))) for p, m in members.items()]


def _typed(*arrays) -> list[np.ndarray]:
    """Writable float copies of a plan's arrays: one compiled signature of the replay
    kernel for every plan (served arrays are read-only, another numba type)."""
    return [np.array(a, dtype=np.float32 if a.ndim == 2 and a.dtype == np.float32
                     else np.float64) for a in arrays]


def _eligible(rows: dict, members: np.ndarray, tables: dict[str, list[str]],
              index: dict[str, int], visit_row: np.ndarray):
    """The members' features, their eligible sets as the candidate's visit rows (in its
    catalog order, CSR), and the position of each logged first offer among them (-1:
    not an offer of the candidate). Vectorised per catalog version; ``members`` must
    list each version's decisions together."""
    features = rows["features"]
    x = np.ascontiguousarray(features[members] if features.dtype != object
                             else np.stack(features[members]), dtype=np.float32)
    indptr = [np.zeros(1, dtype=np.int64)]
    elig, logged = [], []
    versions = rows["catalog_version"][members]
    for v in dict.fromkeys(versions.tolist()):
        sel = members[versions == v]
        table = tables[v]
        nbytes = (len(table) + 7) // 8
        bits = np.unpackbits(np.frombuffer(b"".join(rows["support"][sel]), np.uint8)
                             .reshape(-1, nbytes), axis=1, bitorder="little")[:, :len(table)]
        mine = np.array([index.get(o, -1) for o in table], dtype=np.int64)
        cols = np.flatnonzero(mine >= 0)
        cols = cols[np.argsort(mine[cols], kind="stable")]  # the candidate's catalog order
        order = mine[cols]
        member = bits[:, cols].astype(bool)
        _, c = np.nonzero(member)
        elig.append(visit_row[order[c]])
        indptr.append(indptr[-1][-1] + np.cumsum(member.sum(axis=1)))
        first = np.array([index.get(str(o), -1) for o in rows["offer_id"][sel]])
        at = np.searchsorted(order, first).clip(0, max(len(order) - 1, 0))
        found = (first >= 0) & (len(order) > 0) & (order[at] == first)
        found &= member[np.arange(len(sel)), at] if len(order) else found
        before = np.cumsum(member, axis=1) - member  # eligible offers left of each column
        logged.append(np.where(found, before[np.arange(len(sel)), at], -1))
    return (x, np.concatenate(indptr).astype(np.int64),
            np.concatenate(elig).astype(np.int32), np.concatenate(logged).astype(np.int64))


def render(out: dict) -> str:
    """The estimate as a terminal table."""
    e = out["estimate"]
    lines = [(f"decision whatif: {out['candidate']} ({out['reward']} per decision, first "
              f"slot), {out['replayed']:,} of {out['decisions']:,} decisions replayed "
              f"({out['left_out']:,} left out: decided greedily, or before the customer "
              "had a profile)"),
             f"{'estimator':<26} {'value':>10} {'95% interval':>24}"]
    lb = out["logged_policy"]
    lines.append(f"{'logged policy (on-policy)':<26} {lb['value']:>10.4f} "
                 f"[{lb['lo']:>9.4f}, {lb['hi']:>9.4f}]")
    for name in ("ips", "snips", "dr"):
        if e.get(name):
            v = e[name]
            lines.append(f"{'candidate ' + name.upper():<26} {v['value']:>10.4f} "
                         f"[{v['lo']:>9.4f}, {v['hi']:>9.4f}]")
    lines.append(f"effective sample size {e['ess']:,.0f} ({e['ess_share']:.1%} of the "
                 f"decisions), max weight {e['max_weight']:.1f}, mean weight "
                 f"{e['mean_weight']:.3f}")
    if e.get("support_warning"):
        lines.append(f"WARNING: {e['support_warning']}")
    return "\n".join(lines)
