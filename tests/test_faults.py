"""Backup/restore under load, killed workers, a full map, foreign bytes in the store.

Every test runs real ``decision`` processes (the CLI) and talks gRPC to them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import lmdb
import msgpack
import pytest

from decision.store.database import identity_key, profile_key_bytes
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, ServerProcess, free_port, ident, num, text


# channels in one process share connections unless told not to: each client here has
# its own, so SO_REUSEPORT spreads the clients over the workers
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def purchase(who: str, event_id: str, amount: float = 1.0) -> pb.Event:
    return pb.Event(type="purchase", customer=ident(who), event_id=event_id, channel="web",
                    attributes={"amount": num(amount), "sku": text("S")})


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decision.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


class Ingest:
    """Clients sending events on their own channels until stopped; each keeps the ids
    acknowledged (with the time of the acknowledgement) and the ids sent without one.

    ``kind`` "track": one Track per event; "stream": TrackStream calls of 4 batches
    of 50. A failed call (its server process died) is counted as sent, not
    acknowledged, and the client reconnects and goes on."""

    def __init__(self, address: str, who: str, kind: str):
        self.address, self.who, self.kind = address, who, kind
        self.acked: list[tuple[float, str]] = []  # (monotonic time of the ack, event id)
        self.unacked: list[str] = []
        self.errors: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            with grpc.insecure_channel(self.address, options=OWN_CONNECTION) as ch:
                stub = pb_grpc.DecisionServiceStub(ch)
                while not self.stop.is_set():
                    if self.kind == "track":
                        ids = [f"{self.who}-{n}"]
                    else:
                        ids = [f"{self.who}-{n + i}" for i in range(200)]
                    n += len(ids)
                    try:
                        if self.kind == "track":
                            stub.Track(purchase(self.who, ids[0]), timeout=10,
                                       wait_for_ready=True)
                        else:
                            events = [purchase(self.who, i) for i in ids]
                            summary = stub.TrackStream(
                                iter([pb.EventBatch(events=events[j:j + 50])
                                      for j in range(0, 200, 50)]),
                                timeout=10, wait_for_ready=True)
                            assert summary.applied == len(ids), summary
                    except grpc.RpcError as exc:
                        self.errors[exc.code().name] += 1
                        self.unacked += ids
                        break  # reconnect: the process behind this channel may be gone
                    now = time.monotonic()
                    self.acked += [(now, i) for i in ids]

    def acked_before(self, t: float) -> list[str]:
        return [i for at, i in self.acked if at < t]


def start_clients(address: str, kinds: list[str]) -> list[Ingest]:
    clients = [Ingest(address, f"{kind}{n}", kind) for n, kind in enumerate(kinds)]
    for c in clients:
        c.thread.start()
    return clients


def stop_clients(clients: list[Ingest]) -> None:
    for c in clients:
        c.stop.set()
    for c in clients:
        c.thread.join(timeout=30)
        assert not c.thread.is_alive()


def events_per_profile(store: Path) -> Counter:
    """Applied-event records per profile key, read straight from an LMDB store."""
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, map_size=0)
    try:
        events = env.open_db(b"events", create=False)
        with env.begin() as txn:
            return Counter(msgpack.unpackb(v)[0] for _, v in txn.cursor(db=events))
    finally:
        env.close()


# ------------------------------------------------------------------ backup / restore
def test_backup_while_ingesting_restores_every_acknowledged_event(tmp_path):
    store, copy, restored = tmp_path / "store", tmp_path / "backup", tmp_path / "restored"
    server = ServerProcess(store, TEST_CATALOG, free_port())
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            served_version = stub.ListOffers(pb.ListOffersRequest()).catalog_version
            stub.UpsertProfile(pb.UpsertProfileRequest(
                identifiers=[ident("vip")], attributes={"tier": num(3), "country": text("FR")}))
            erased = stub.UpsertProfile(pb.UpsertProfileRequest(
                identifiers=[ident("gone")], attributes={"country": text("ERASED-BYTES")}))
            stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=ident("gone")))
        clients = start_clients(server.address, ["track", "track", "stream", "stream"])
        time.sleep(1.0)
        backup_started = time.monotonic()
        out = cli("backup", "--data-dir", str(store), str(copy))
        backup_ended = time.monotonic()
        time.sleep(0.3)
        stop_clients(clients)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "backed up" in out.stdout and f"catalog {served_version}" in out.stdout

        # the servers kept writing while the copy was taken
        during = sum(1 for c in clients for at, _ in c.acked
                     if backup_started <= at < backup_ended)
        assert during > 0
        # a running server has the store open: never restored over, even with --force
        refused = cli("restore", str(copy), "--data-dir", str(store), "--force")
        assert refused.returncode == 2
        assert "open in a running process" in refused.stderr
    finally:
        server.stop()

    # compaction dropped the erased customer's bytes (the live file may still hold them)
    assert b"ERASED-BYTES" not in (copy / "data.mdb").read_bytes()
    assert erased.profile_key

    out = cli("restore", str(copy), "--data-dir", str(restored))
    assert out.returncode == 0, out.stderr
    assert f"catalog {served_version}" in out.stdout
    again = cli("restore", str(copy), "--data-dir", str(restored))
    assert again.returncode == 2 and "--force" in again.stderr
    assert cli("restore", str(copy), "--data-dir", str(restored), "--force").returncode == 0

    per_profile = events_per_profile(restored)
    server = ServerProcess(restored, TEST_CATALOG, free_port())
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            vip = stub.GetProfile(pb.GetProfileRequest(customer=ident("vip")))
            assert vip.attributes["tier"].number_value == 3
            with pytest.raises(grpc.RpcError) as err:
                stub.GetProfile(pb.GetProfileRequest(customer=ident("gone")))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            acked_before = 0
            for c in clients:
                got = stub.GetProfile(pb.GetProfileRequest(customer=ident(c.who)))
                before = c.acked_before(backup_started)
                acked_before += len(before)
                # every event acknowledged before the backup started is in the copy
                assert got.counters["purchases"] >= len(before) > 0
                # and the copy is one snapshot: the counters and the event-id log agree
                assert got.counters["purchases"] == per_profile[int(got.profile_key, 16)]
                # the very ids: sending them again finds each one already applied
                summary = stub.TrackStream(iter(
                    [pb.EventBatch(events=[purchase(c.who, i) for i in before[j:j + 1000]])
                     for j in range(0, len(before), 1000)]))
                assert (summary.applied, summary.duplicates) == (0, len(before))
    finally:
        server.stop()
    print(f"\nbackup under load: {acked_before} events acknowledged before the backup, all "
          f"restored; {during} acknowledged while it ran")


def test_backups_taken_while_the_map_grows_are_each_one_snapshot(tmp_path):
    """A 1 MiB map that doubles several times while backups run one after another:
    each backup opens (adopting the grown map where needed) and holds one commit's
    state: every profile's counter equals its event records in that copy."""
    store = tmp_path / "store"
    server = ServerProcess(store, TEST_CATALOG, free_port(), "--map-size", "1")
    try:
        server.wait_ready()
        clients = start_clients(server.address, ["stream"] * 3)
        copies = []
        for n in range(6):
            time.sleep(0.3)
            copy = tmp_path / f"backup-{n}"
            out = cli("backup", "--data-dir", str(store), str(copy))
            assert out.returncode == 0, out.stderr
            copies.append(copy)
        stop_clients(clients)
    finally:
        server.stop()
    assert (store / "data.mdb").stat().st_size > 4 << 20  # the map grew
    sizes = []
    for copy in copies:
        per_profile = events_per_profile(copy)
        env = lmdb.open(str(copy), readonly=True, lock=False, max_dbs=16, map_size=0)
        try:
            from decision.store.layout import decode

            profiles = env.open_db(b"profiles", create=False)
            with env.begin() as txn:
                counters = {int.from_bytes(k, "big"): decode(v, 0).counters.get("purchases", 0)
                            for k, v in txn.cursor(db=profiles)}
        finally:
            env.close()
        assert counters == dict(per_profile)
        sizes.append(sum(per_profile.values()))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # taken while ingesting
    for path in (store, *copies):  # ~45 MB; kept when an assertion above fails
        shutil.rmtree(path)


def test_backup_and_restore_refuse_what_they_cannot_do(tmp_path, running):
    live = running.engine.store.path
    assert cli("backup", "--data-dir", str(tmp_path / "nothing"), str(tmp_path / "b")
               ).stderr.endswith("no profile store here (no data.mdb)\n")
    (tmp_path / "taken").mkdir()
    out = cli("backup", "--data-dir", str(live), str(tmp_path / "taken"))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"\x00" * 20000)
    out = cli("restore", str(tmp_path / "junk"), "--data-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "not a readable LMDB store" in out.stderr
    assert not (tmp_path / "r" / "data.mdb").exists()

    foreign = tmp_path / "foreign"  # an LMDB environment that is not a profile store
    env = lmdb.open(str(foreign), max_dbs=4)
    env.open_db(b"profiles")
    env.close()
    out = cli("restore", str(foreign), "--data-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "sub-database 'identity' is missing" in out.stderr

    # the live store (an in-process server has it open) backs up fine
    assert cli("backup", "--data-dir", str(live), str(tmp_path / "ok")).returncode == 0
    out = cli("restore", str(tmp_path / "ok"), "--data-dir", str(live), "--force")
    assert out.returncode == 2 and "open in a running process" in out.stderr


# ------------------------------------------------------------------ killed worker
def _children(pid: int) -> list[int]:
    from tests.test_processes import _children as children

    return children(pid)


def _connections(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    lines = [line for table in ("tcp", "tcp6")  # grpc listens on IPv4-mapped IPv6
             for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


def _serving_since(log: Path, pid: int) -> bool:
    return f"(pid {pid}," in log.read_text()


def test_kill_9_of_a_worker_under_load_loses_no_acknowledged_event(tmp_path):
    store = tmp_path / "store"
    server = ServerProcess(store, TEST_CATALOG, free_port(), "--workers", "2")
    try:
        server.wait_ready()
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        with grpc.insecure_channel(server.address) as ch:
            pb_grpc.DecisionServiceStub(ch).UpsertProfile(pb.UpsertProfileRequest(
                identifiers=[ident("reader")], attributes={"tier": num(3),
                                                           "country": text("FR")}))
        clients = start_clients(server.address, ["track"] * 4 + ["stream"] * 3)
        decide_ok: list[float] = []
        decide_failed = Counter()
        stop = threading.Event()

        def decide() -> None:  # a client that reconnects on failure, as a kiosk would
            ask = pb.DecideRequest(customer=ident("reader"), channel="web",
                                   context={"country": text("FR")})
            while not stop.is_set():
                with grpc.insecure_channel(server.address, options=OWN_CONNECTION) as ch:
                    stub = pb_grpc.DecisionServiceStub(ch)
                    while not stop.is_set():
                        try:
                            assert stub.Decide(ask, timeout=2).offers[0].offer_id == \
                                "gold-upgrade"
                        except grpc.RpcError as exc:
                            decide_failed[exc.code().name] += 1
                            break
                        decide_ok.append(time.monotonic())

        deciders = [threading.Thread(target=decide, daemon=True) for _ in range(2)]
        for t in deciders:
            t.start()
        time.sleep(1.5)
        # the worker holding the most client connections (SO_REUSEPORT spreads them)
        held = {w: _connections(w, server.port) for w in workers}
        victim, survivor = sorted(workers, key=held.get, reverse=True)
        assert held[victim] > 0, held
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced_at = None
        deadline = killed_at + 60
        while replaced_at is None:  # the supervisor starts a new worker
            new = [p for p in _children(server.proc.pid) if p not in workers]
            if new and _serving_since(server.log, new[0]):
                replaced_at = time.monotonic()
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.05)
        time.sleep(1.0)
        stop.set()
        stop_clients(clients)
        for t in deciders:
            t.join(timeout=30)
        assert survivor in _children(server.proc.pid)  # the other worker never stopped

        # the other worker answered Decide all along: no gap near the restart time
        window = [t for t in decide_ok if killed_at <= t <= replaced_at]
        gaps = [b - a for a, b in zip([killed_at, *window], [*window, replaced_at])]
        assert len(window) > 10 and max(gaps) < 1.0, (len(window), max(gaps))

        acked = sum(len(c.acked) for c in clients)
        unacked = sum(len(c.unacked) for c in clients)
        assert sum(sum(c.errors.values()) for c in clients) > 0  # the kill hit clients
        found = 0
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            for c in clients:
                got = stub.GetProfile(pb.GetProfileRequest(customer=ident(c.who)),
                                      wait_for_ready=True, timeout=10)
                n = int(got.counters["purchases"])
                # every acknowledged event is there; an unacknowledged one may be
                assert len(c.acked) <= n <= len(c.acked) + len(c.unacked), c.who
                found += n
    finally:
        output = server.stop()
    assert server.proc.returncode == 0, output
    print(f"\nkill -9 of 1 of 2 workers: {acked} events acknowledged, {found} found "
          f"({unacked} sent without acknowledgement, {found - acked} of them applied); "
          f"replacement serving after {replaced_at - killed_at:.1f} s, Decide answered "
          f"{len(window)} times meanwhile (largest gap {max(gaps) * 1000:.0f} ms; failed: "
          f"{dict(decide_failed)}; client connections per worker before the kill: "
          f"{sorted(held.values())})")


# ------------------------------------------------------------------ full map
def test_a_tiny_map_grows_under_two_workers(tmp_path):
    """--map-size 1 (MiB): the worker whose write finds the map full doubles it; the
    other adopts the new size at its next transaction; nothing is refused or lost."""
    store = tmp_path / "store"
    server = ServerProcess(store, TEST_CATALOG, free_port(), "--workers", "2",
                           "--map-size", "1")
    try:
        server.wait_ready()
        workers = _children(server.proc.pid)
        channels = [grpc.insecure_channel(server.address) for _ in range(6)]
        try:
            stubs = [pb_grpc.DecisionServiceStub(ch) for ch in channels]
            note = {f"note{j}": text(f"{j:02d}" * 100) for j in range(30)}
            for i in range(300):  # ~2 MiB of profiles over connections to both workers
                stubs[i % 6].UpsertProfile(pb.UpsertProfileRequest(
                    identifiers=[ident(f"big-{i}")], attributes=note), timeout=10)
            for i in range(300):
                got = stubs[(i + 1) % 6].GetProfile(
                    pb.GetProfileRequest(customer=ident(f"big-{i}")), timeout=10)
                assert got.attributes["note29"].string_value == "29" * 100
        finally:
            for ch in channels:
                ch.close()
        assert _children(server.proc.pid) == workers  # no worker died on the way
    finally:
        output = server.stop()
    assert (store / "data.mdb").stat().st_size > 1 << 21
    assert "exited" not in output and "Traceback" not in output


# ------------------------------------------------------------------ foreign bytes
GARBAGE = [
    b"",
    b"garbage!",
    b"\xff" * 64,
    # a valid head with a tail of the wrong shapes (foreign writer, future version)
]


def _head(n: int = 4) -> bytes:
    from decision.store.layout import HEAD, LAYOUT_VERSION, MAGIC

    return HEAD.pack(MAGIC, LAYOUT_VERSION, 0, n, 0, 0) + bytes(4 * n)


def _tail(**fields) -> bytes:
    base = {"a": {}, "c": {}, "i": [["customer_id", "bad"]], "t": 0}
    return msgpack.packb({**base, **fields})


FOREIGN = GARBAGE + [
    _head() + b"\xc1",  # msgpack's never-used byte
    _head() + _tail(a={"tier": {"nested": 1}}),
    _head() + _tail(a={"tier": [1, 2]}),
    _head() + _tail(a={"tier": None}),
    _head() + _tail(a={7: "x"}),
    _head() + _tail(c={"purchases": "many"}),
    _head() + _tail(c={1: 1}),
    _head() + _tail(i=[["customer_id", 5]]),
    _head() + _tail(i=[["customer_id"]]),
    _head() + _tail(s=[1, None]),
    _head() + _tail(m=["x"]),
    _head() + _tail(m=[-1]),
    _head() + _tail(t=2 ** 64 - 1),  # out of int64
    _head() + _tail(a={"tier": b"bytes"}),
]


def test_foreign_bytes_in_the_store_are_data_loss_for_that_customer_only(tmp_path):
    """Values the server never wrote (another program, a future layout, bit rot)
    under profile keys: every RPC naming such a customer answers DATA_LOSS (or, for
    a write, refuses with a clean status), never INTERNAL; everyone else is served;
    the process stays up."""
    store = tmp_path / "store"
    server = ServerProcess(store, TEST_CATALOG, free_port())
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.UpsertProfile(pb.UpsertProfileRequest(
                identifiers=[ident("fine")], attributes={"tier": num(3),
                                                         "country": text("FR")}))
            for n in range(len(FOREIGN)):
                stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident(f"bad{n}")]))
            keys = [int(stub.GetProfile(pb.GetProfileRequest(customer=ident(f"bad{n}")))
                        .profile_key, 16) for n in range(len(FOREIGN))]
            env = lmdb.open(str(store), max_dbs=16, map_size=0)  # another program
            profiles = env.open_db(b"profiles", create=False)
            with env.begin(write=True) as txn:
                for key, value in zip(keys, FOREIGN):
                    txn.put(profile_key_bytes(key), value, db=profiles)
            env.close()
            fine = stub.GetProfile(pb.GetProfileRequest(customer=ident("fine")))

            bad_codes = Counter()
            for n, value in enumerate(FOREIGN):
                who = ident(f"bad{n}")
                calls = {
                    "Decide": lambda: stub.Decide(pb.DecideRequest(customer=who,
                                                                   channel="web")),
                    "GetProfile": lambda: stub.GetProfile(pb.GetProfileRequest(customer=who)),
                    "Track": lambda: stub.Track(purchase(who.value, f"e{n}")),
                    "TrackStream": lambda: stub.TrackStream(iter([pb.EventBatch(
                        events=[purchase(who.value, f"s{n}"), purchase("fine", f"f{n}")])])),
                    "UpsertProfile": lambda: stub.UpsertProfile(pb.UpsertProfileRequest(
                        identifiers=[who], attributes={"tier": num(1)})),
                    "Identify": lambda: stub.Identify(pb.IdentifyRequest(
                        identifiers=[who, ident(f"new{n}", "cookie")])),
                }
                for name, call in calls.items():
                    try:
                        reply = call()
                    except grpc.RpcError as exc:
                        bad_codes[exc.code().name] += 1
                        assert exc.code() == grpc.StatusCode.DATA_LOSS, \
                            (n, value, name, exc.code(), exc.details())
                        assert f"{keys[n]:016x}" in exc.details(), exc.details()
                        continue
                    if name == "Decide":  # reads only the attributes its rules use, and
                        continue  # a value of the wrong type there is a missing value
                    # a stream answers: the bad event is rejected, the other applied
                    assert name == "TrackStream", (n, value, name, reply)
                    assert (reply.applied, reply.rejected_count) == (1, 1), reply
                    assert f"{keys[n]:016x}" in reply.rejected[0].message
                # it stays DATA_LOSS (nothing "repaired" it by overwriting it) ...
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetProfile(pb.GetProfileRequest(customer=who))
                assert err.value.code() == grpc.StatusCode.DATA_LOSS
                # ... and the customer can still be erased (right to erasure)
                forgot = stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=who))
                assert forgot.profile_key == f"{keys[n]:016x}"
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetProfile(pb.GetProfileRequest(customer=who))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                # everyone else is served as before
                assert stub.Decide(pb.DecideRequest(
                    customer=ident("fine"), channel="web",
                    context={"country": text("FR")})).offers[0].offer_id == "gold-upgrade"
            after = stub.GetProfile(pb.GetProfileRequest(customer=ident("fine")))
            assert after.counters["purchases"] == len(FOREIGN)
            assert after.attributes["tier"] == fine.attributes["tier"]
            assert after.attributes["country"] == fine.attributes["country"]
            # foreign values in the event-id and trigger logs name no customer: erasure
            # of another customer still scans past them
            env = lmdb.open(str(store), max_dbs=16, map_size=0)
            events, triggers = (env.open_db(name, create=False)
                                for name in (b"events", b"triggers"))
            with env.begin(write=True) as txn:
                txn.put(b"foreign-event", b"\xc1junk", db=events)
                txn.put(b"foreign-event2", msgpack.packb(["x"]), db=events)
                txn.put(profile_key_bytes(1 << 60), msgpack.packb({"not": "a list"}),
                        db=triggers)
            env.close()
            forgot = stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=ident("fine")))
            assert forgot.events_removed == len(FOREIGN)

            # identifier links that are not 8-byte profile keys, and a catalog version
            # that is not UTF-8, written by another program
            links = [b"", b"abc", b"\x01" * 20]
            env = lmdb.open(str(store), max_dbs=16, map_size=0)
            identity, meta = (env.open_db(name, create=False)
                              for name in (b"identity", b"meta"))
            with env.begin(write=True) as txn:
                for n, link in enumerate(links):
                    txn.put(identity_key("customer_id", f"link{n}"), link, db=identity)
                txn.put(b"catalog_version", b"\xff\xfe", db=meta)
            env.close()
            for n in range(len(links)):
                who = ident(f"link{n}")
                for call in (
                        lambda: stub.Decide(pb.DecideRequest(customer=who, channel="web")),
                        lambda: stub.GetProfile(pb.GetProfileRequest(customer=who)),
                        lambda: stub.Track(purchase(who.value, "x")),
                        lambda: stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[who])),
                        lambda: stub.Identify(pb.IdentifyRequest(
                            identifiers=[who, ident(f"k{n}", "cookie")]))):
                    with pytest.raises(grpc.RpcError) as err:
                        call()
                    assert err.value.code() == grpc.StatusCode.DATA_LOSS
                    assert f"identifier customer_id 'link{n}'" in err.value.details()
                stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=who))  # the link goes
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetProfile(pb.GetProfileRequest(customer=who))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            time.sleep(1.5)  # the catalog follower has looked at the version at least once
            assert stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web")).offers
        assert server.proc.poll() is None
    finally:
        output = server.stop()
    assert "internal error" not in output and "Traceback" not in output, output
