"""Inspire: RunCampaign and ``decision campaign`` decide for a segment's members with
the same rules, policies and model as Decide, and write a file a messaging tool loads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import grpc
import pytest

from decision.v1 import decision_pb2 as pb
from tests.conftest import ident, num, text
from tests.test_moments import PARIS, FakeClock, Moments

EVENING = datetime(2026, 3, 4, 22, 30, tzinfo=PARIS)


@pytest.fixture
def shop(tmp_path):
    """Three shoppers (one converted on bags, one in New York), two browsers."""
    m = Moments(tmp_path, FakeClock(EVENING))
    for who in ("s1", "s2", "s3"):
        m.track(who, "purchase", attributes={"amount": num(50)})
    m.outcome("s2", "conversion", "bags", channel="email")
    m.stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("s3")], attributes={"timezone": text("America/New_York")}))
    for who in ("b1", "b2"):
        m.track(who, "add_to_cart", attributes={"sku": text("X")})
    yield m
    m.close()


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_campaign_file_has_the_segment_members_and_their_decide_answers(shop):
    summary = shop.stub.RunCampaign(pb.CampaignRequest(
        segment="shoppers", channel="email", name="spring"), timeout=60)
    assert (summary.members, summary.decided, summary.rows, summary.skipped) == (3, 3, 3, 0)
    assert summary.path.endswith("spring.csv")
    rows = _rows(summary.path)
    assert sorted(r["customer_id"] for r in rows) == ["s1", "s2", "s3"]
    assert {r["customer_kind"] for r in rows} == {"customer_id"}
    by_customer = {r["customer_id"]: r for r in rows}
    # the same answer Decide gives each of them, policies included (s2 converted on bags)
    for who, row in by_customer.items():
        answer = shop.decide(who, channel="email", limit=1)
        assert row["offer_id"] == answer.offers[0].offer_id
        assert float(row["score"]) == pytest.approx(answer.offers[0].score, rel=1e-12)
        assert int(row["send_at_ms"]) == answer.deliver_at_ms
        assert row["rank"] == "1"
        assert row["decision_id"].startswith(summary.campaign_id + ".")
    assert by_customer["s2"]["offer_id"] == "shoes"
    assert by_customer["s1"]["offer_id"] == "bags"
    # 22:30 in Paris is outside the send window: 08:00 tomorrow, Paris time...
    assert by_customer["s1"]["send_at"] == "2026-03-05T07:00:00Z"
    # ...while in New York it is 16:30, inside the window: sent after the minimum delay
    ny = datetime.fromtimestamp(int(by_customer["s3"]["send_at_ms"]) / 1000,
                                tz=ZoneInfo("America/New_York"))
    assert (ny.hour, ny.minute) == (16, 40)


def test_campaign_limit_and_json_lines(shop):
    summary = shop.stub.RunCampaign(pb.CampaignRequest(
        segment="carters", channel="sms", name="carts", format="jsonl", limit=2), timeout=60)
    with open(summary.path) as f:
        rows = [json.loads(line) for line in f]
    assert summary.rows == len(rows) == 4
    assert sorted({r["customer_id"] for r in rows}) == ["b1", "b2"]
    assert [r["rank"] for r in rows] == [1, 2, 1, 2]
    assert {r["offer_id"] for r in rows} == {"bags", "shoes"}


@pytest.mark.parametrize(("fields", "message"), [
    (dict(segment="vips", channel="email", name="x"), "segment: unknown segment 'vips'"),
    (dict(segment="shoppers", channel="fax", name="x"), "channel: unknown channel 'fax'"),
    (dict(segment="shoppers", channel="email", name="../etc/x"), "name: the file's name"),
    (dict(segment="shoppers", channel="email", name=""), "name: the file's name"),
    (dict(segment="shoppers", channel="email", name="x", limit=0), "limit: must be between"),
    (dict(segment="shoppers", channel="email", name="x", format="xls"), "format: csv, jsonl"),
])
def test_campaign_bad_requests_say_what_to_fix(shop, fields, message):
    with pytest.raises(grpc.RpcError) as err:
        shop.stub.RunCampaign(pb.CampaignRequest(**fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_campaign_command_line(shop, tmp_path):
    out = tmp_path / "out" / "shoppers.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "decision.cli", "campaign", "--data-dir",
         str(shop.settings.data_dir), "--catalog", str(shop.settings.catalog_path),
         "--segment", "shoppers", "--channel", "email", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 members of shoppers, 3 with an offer, 3 rows written" in done.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["customer_id"] for r in rows) == ["s1", "s2", "s3"]
    # a batch job changes no serving state: an edited catalog is not published
    edited = tmp_path / "edited.toml"
    edited.write_text(shop.settings.catalog_path.read_text() + "\n# edited\n")
    served = shop.running.engine.store.published_catalog()
    done = subprocess.run(
        [sys.executable, "-m", "decision.cli", "campaign", "--data-dir",
         str(shop.settings.data_dir), "--catalog", str(edited), "--segment", "shoppers",
         "--channel", "email", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert shop.running.engine.store.published_catalog() == served
    bad = subprocess.run(
        [sys.executable, "-m", "decision.cli", "campaign", "--data-dir",
         str(shop.settings.data_dir), "--catalog", str(shop.settings.catalog_path),
         "--segment", "nobody", "--channel", "email", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "segment: unknown segment 'nobody' (known: shoppers, carters)" in bad.stderr


def test_campaign_reads_chunk_after_chunk_and_skips_corrupt_profiles(shop, monkeypatch):
    """Chunks of 2 profiles (each its own read transaction) resume where the last one
    stopped: every member once; a profile value that is not one of ours is left out
    and counted, the rest of the campaign goes on."""
    from decision.core import inspire as campaign
    from decision.store.database import profile_key_bytes

    monkeypatch.setattr(campaign, "CHUNK", 2)
    store = shop.running.engine.store
    store.write(lambda txn: txn.put(profile_key_bytes(10_000), b"DP\x01\x00garbage",
                                    db=store.profiles_db))
    summary = shop.stub.RunCampaign(pb.CampaignRequest(
        segment="shoppers", channel="email", name="chunks"), timeout=60)
    assert (summary.members, summary.skipped) == (3, 1)
    assert sorted(r["customer_id"] for r in _rows(summary.path)) == ["s1", "s2", "s3"]
    assert not list(shop.settings.campaign_dir.glob("*.part"))


def test_a_closing_server_stops_a_campaign_between_chunks(shop):
    """Shutdown sets the servicer's closing flag: a campaign gives up at its next chunk
    with UNAVAILABLE, and leaves no file (half or whole) behind."""
    shop.running.servicer.closing.set()
    with pytest.raises(grpc.RpcError) as err:
        shop.stub.RunCampaign(pb.CampaignRequest(
            segment="shoppers", channel="email", name="late"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.value.details()
    assert not list(shop.settings.campaign_dir.glob("late*"))
