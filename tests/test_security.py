"""Who may do what: bearer tokens with roles, TLS, mutual TLS, the loopback default.

Certificates are generated per run (a throw-away CA, a server certificate for
127.0.0.1/localhost, a client certificate); no private key is committed.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decision.errors import ConfigError
from decision.edge.server import create_server, start
from decision.settings import Settings
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import ident
from tests.test_events import purchase as purchase_event

TOKENS = {
    "frontend": "decide-token-0123456789abcdef",
    "collector": "ingest-token-0123456789abcdef",
    "ops": "admin-token-0123456789abcdef-xyz",
    "etl": "hashed-token-0123456789abcdef",
}

CREDENTIALS = f"""
[[client]]
name = "frontend"
token = "{TOKENS['frontend']}"
roles = ["decide"]

[[client]]
name = "collector"
token = "{TOKENS['collector']}"
roles = ["ingest"]

[[client]]
name = "ops"
token = "{TOKENS['ops']}"
roles = ["admin"]

[[client]]
name = "etl"
token_sha256 = "{hashlib.sha256(TOKENS['etl'].encode()).hexdigest()}"
roles = ["decide", "ingest"]
"""


def bearer(client: str):
    return (("authorization", f"Bearer {TOKENS[client]}"),)


# ------------------------------------------------------------------ certificates
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("decision test CA"))
          .issuer_name(name("decision test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, san):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("localhost", [x509.DNSName("localhost"),
                                                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = leaf("frontend", None)
    files = {}
    for label, data in [("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
                        ("server.pem", server_cert.public_bytes(serialization.Encoding.PEM)),
                        ("server.key", pem_key(server_key)),
                        ("client.pem", client_cert.public_bytes(serialization.Encoding.PEM)),
                        ("client.key", pem_key(client_key))]:
        (out / label).write_bytes(data)
        files[label] = out / label
    return files


@pytest.fixture
def credentials_file(tmp_path):
    path = tmp_path / "clients.toml"
    path.write_text(CREDENTIALS)
    return path


def _serve(settings: Settings):
    running = create_server(settings)
    start(running)
    return running


@pytest.fixture
def secured(settings, credentials_file):
    """A plaintext loopback server that requires tokens; access log for every call."""
    import dataclasses

    running = _serve(dataclasses.replace(settings, credentials=credentials_file,
                                         access_log_sample=1.0))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield running, ch
    running.stop(grace=None)


# ------------------------------------------------------------------ tokens and roles
def _calls():
    """One request per unary RPC (valid enough to get past the gate)."""
    return {
        "Decide": pb.DecideRequest(customer=ident("sec-alice"), channel="web"),
        "GetProfile": pb.GetProfileRequest(customer=ident("sec-alice")),
        "ListOffers": pb.ListOffersRequest(),
        "Track": purchase_event("sec-alice", 5.0),
        "Identify": pb.IdentifyRequest(identifiers=[ident("sec-alice"),
                                                    ident("c-1", "cookie")]),
        "UpsertProfile": pb.UpsertProfileRequest(identifiers=[ident("sec-bob")]),
        "ForgetCustomer": pb.ForgetCustomerRequest(customer=ident("sec-nobody")),
        "ReloadCatalog": pb.ReloadCatalogRequest(),
    }


ALLOWED = {
    "frontend": {"Decide", "GetProfile", "ListOffers"},
    "collector": {"Track", "Identify", "UpsertProfile"},
    "ops": set(_calls()),
    "etl": {"Decide", "GetProfile", "ListOffers", "Track", "Identify", "UpsertProfile"},
}
NEEDED = {"Decide": "decide", "GetProfile": "decide", "ListOffers": "decide",
          "Track": "ingest", "Identify": "ingest", "UpsertProfile": "ingest",
          "ForgetCustomer": "admin", "ReloadCatalog": "admin"}


def test_each_role_may_call_exactly_its_rpcs(secured):
    _, ch = secured
    stub = pb_grpc.DecisionServiceStub(ch)
    for client, allowed in ALLOWED.items():
        for method, request in _calls().items():
            call = getattr(stub, method)
            if method in allowed:
                try:
                    call(request, metadata=bearer(client), timeout=10)
                except grpc.RpcError as exc:  # past the gate; e.g. NOT_FOUND is fine
                    assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED,
                                              grpc.StatusCode.PERMISSION_DENIED), \
                        (client, method, exc.details())
            else:
                with pytest.raises(grpc.RpcError) as err:
                    call(request, metadata=bearer(client), timeout=10)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (client, method)
                assert f"lacks the role '{NEEDED[method]}'" in err.value.details()
                assert f"client '{client}'" in err.value.details()


def test_streams_check_roles_too(secured):
    _, ch = secured
    stub = pb_grpc.DecisionServiceStub(ch)
    batch = [pb.EventBatch(events=[purchase_event("sec-stream", 1.0)])]
    with pytest.raises(grpc.RpcError) as err:
        stub.TrackStream(iter(batch), metadata=bearer("frontend"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.TrackStream(iter(batch), metadata=bearer("collector"), timeout=10).applied == 1
    with pytest.raises(grpc.RpcError) as err:
        next(stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=1),
                                metadata=bearer("frontend"), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'ingest'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        next(stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=1), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("metadata", [
    None,
    (("authorization", "Bearer wrong-token-0123456789abcdef"),),
    (("authorization", f"Basic {TOKENS['ops']}"),),
    (("authorization", "Bearer "),),
    (("authorization", f"Bearer {TOKENS['ops']}x"),),
    (("authorization", f"Bearer {TOKENS['ops'][:-1]}"),),
])
def test_no_or_unknown_token_is_unauthenticated(secured, metadata):
    _, ch = secured
    stub = pb_grpc.DecisionServiceStub(ch)
    for _ in range(2):  # the right token first, so the server has verified it once
        stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"),
                    metadata=bearer("ops"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"),
                    metadata=metadata, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in err.value.details()


def test_health_and_reflection_stay_open(secured):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, ch = secured
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    answers = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "decision.v1.DecisionService" in names


def test_tokens_are_never_logged_and_clients_are_named(secured, caplog):
    _, ch = secured
    stub = pb_grpc.DecisionServiceStub(ch)
    with caplog.at_level(logging.INFO, logger="decision"):
        stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"),
                    metadata=bearer("frontend"), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.ReloadCatalog(pb.ReloadCatalogRequest(), metadata=bearer("frontend"))
        with pytest.raises(grpc.RpcError):
            stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"),
                        metadata=(("authorization", "Bearer not-a-known-token-123456"),))
    access = [r for r in caplog.records if r.name == "decision.access"]
    assert [(r.fields["method"], r.fields["code"], r.fields["client"]) for r in access] == [
        ("Decide", "OK", "frontend"), ("ReloadCatalog", "PERMISSION_DENIED", "frontend"),
        ("Decide", "UNAUTHENTICATED", None)]
    everything = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}"
                           for r in caplog.records)
    for token in [*TOKENS.values(), "not-a-known-token-123456"]:
        assert token not in everything


@pytest.mark.parametrize("text, complaint", [
    ("[[client]]\nname = 'a'\nroles = ['decide']\n", "exactly one of token, token_sha256"),
    ("[[client]]\nname = 'a'\ntoken = 'short'\nroles = ['decide']\n", "at least 16"),
    ("[[client]]\nname = 'a'\ntoken_sha256 = 'abc'\nroles = ['decide']\n", "64 hex digits"),
    ("[[client]]\nname = 'a'\ntoken = '0123456789abcdefgh'\nroles = ['root']\n", "roles must"),
    ("[[client]]\nname = 'a'\ntoken = '0123456789abcdefgh'\nroles = ['admin']\n"
     "[[client]]\nname = 'b'\ntoken = '0123456789abcdefgh'\nroles = ['admin']\n",
     "same token as another client"),
    ("[[client]]\nname = 'a'\ntoken = '0123456789abcdefgh'\nrole = ['admin']\n", "unknown keys"),
    ("", "no [[client]] entries"),
])
def test_a_bad_credentials_file_is_refused_at_start(settings, tmp_path, text, complaint):
    import dataclasses

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        create_server(dataclasses.replace(settings, credentials=path))
    assert complaint in str(err.value)


# ------------------------------------------------------------------ the loopback default
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decision.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_public_address_without_credentials_refuses_to_start(tmp_path, catalog_file):
    base = ["serve", "--data-dir", str(tmp_path / "s"), "--catalog", str(catalog_file)]
    result = _cli(*base, "--address", "0.0.0.0:0")
    assert result.returncode == 2
    assert "refusing to serve 0.0.0.0:0 without credentials" in result.stderr
    assert "--allow-unauthenticated" in result.stderr
    assert not (tmp_path / "s").exists()  # refused before touching anything
    # loopback is the documented demo default, and the explicit flag allows the rest
    for address, extra in [("127.0.0.1:0", ()), ("[::1]:0", ()), ("localhost:0", ()),
                           ("0.0.0.0:0", ("--allow-unauthenticated",))]:
        Settings(data_dir=tmp_path / "s", catalog_path=catalog_file, address=address,
                 allow_unauthenticated=bool(extra))
    Settings(data_dir=tmp_path / "s", catalog_path=catalog_file, address="0.0.0.0:0",
             credentials=tmp_path / "clients.toml")


# ------------------------------------------------------------------ TLS
def _tls_settings(settings, pki, mutual: bool, credentials=None):
    import dataclasses

    return dataclasses.replace(settings, tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                               tls_client_ca=pki["ca.pem"] if mutual else None,
                               credentials=credentials)


def _decide(channel) -> pb.DecideResponse:
    return pb_grpc.DecisionServiceStub(channel).Decide(
        pb.DecideRequest(customer=ident("x"), channel="web"), timeout=10)


def test_tls_serves_to_clients_that_trust_the_ca_only(settings, pki):
    running = _serve(_tls_settings(settings, pki, mutual=False))
    try:
        address = f"127.0.0.1:{running.port}"
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes())
        with grpc.secure_channel(address, creds) as ch:
            assert _decide(ch).offers
        with grpc.insecure_channel(address) as ch:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError) as err:
                _decide(ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(
                root_certificates=pki["client.pem"].read_bytes())) as ch:  # wrong trust root
            with pytest.raises(grpc.RpcError) as err:
                _decide(ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=None)


def test_mutual_tls_requires_a_client_certificate(settings, pki):
    running = _serve(_tls_settings(settings, pki, mutual=True))
    try:
        address = f"127.0.0.1:{running.port}"
        ca = pki["ca.pem"].read_bytes()
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as ch:
            with pytest.raises(grpc.RpcError) as err:
                _decide(ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(ca, pki["client.key"].read_bytes(),
                                             pki["client.pem"].read_bytes())
        with grpc.secure_channel(address, creds) as ch:
            assert _decide(ch).offers
    finally:
        running.stop(grace=None)


def test_tls_settings_are_checked_at_start(settings, pki, tmp_path):
    import dataclasses

    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        dataclasses.replace(settings, tls_cert=pki["server.pem"])
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        dataclasses.replace(settings, tls_client_ca=pki["ca.pem"])
    with pytest.raises(ConfigError, match="--tls-key .*missing.key"):
        create_server(dataclasses.replace(settings, tls_cert=pki["server.pem"],
                                          tls_key=tmp_path / "missing.key"))


def test_decision_ask_passes_a_token_and_trusts_a_ca(settings, pki, credentials_file):
    running = _serve(_tls_settings(settings, pki, mutual=True, credentials=credentials_file))
    try:
        base = ["ask", "--address", f"127.0.0.1:{running.port}", "--customer", "x",
                "--channel", "web", "--json", "--tls-ca", str(pki["ca.pem"]),
                "--client-cert", str(pki["client.pem"]), "--client-key", str(pki["client.key"])]
        ok = _cli(*base, "--token", TOKENS["frontend"])
        assert ok.returncode == 0, ok.stderr
        assert '"decision_id"' in ok.stdout
        no_token = _cli(*base)
        assert no_token.returncode == 1
        assert "UNAUTHENTICATED" in no_token.stderr
    finally:
        running.stop(grace=None)
