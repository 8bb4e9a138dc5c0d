"""The Job route for identities: Secrets that hold what `strife-certs` would
write, issued once, and only the missing ones on a later run."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.bft.group import Group
from strife.cluster.topology import load_topology, parse_topology
from strife.deploy.identities import CA_SECRET, TOKEN_KEY_SECRET, Identity, planned_identities
from strife.deploy.replicated import GROUP_FILE, GroupLayout, issue_group_keys, public_key
from strife.deploy.secrets_job import (
    InClusterSecrets,
    identity_arg,
    issue_missing,
    parse_identity_arg,
)
from strife.security import certs
from strife.security.identity import identity_of_certificate

from .conftest import Pki

REPO = Path(__file__).resolve().parents[1]


class FakeSecrets:
    def __init__(self) -> None:
        self.secrets: dict[str, tuple[dict[str, bytes], str]] = {}

    def get(self, name: str) -> dict[str, bytes] | None:
        found = self.secrets.get(name)
        return None if found is None else found[0]

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None:
        assert name not in self.secrets, f"{name} created twice"
        self.secrets[name] = (data, kind)


def test_every_identity_is_issued_as_strife_certs_would() -> None:
    topology = load_topology(REPO / "deploy" / "fifteen-banks-hosted.toml")
    plan = planned_identities(topology)
    store = FakeSecrets()
    created = issue_missing(store, plan, "strife.local")
    assert created == [CA_SECRET, *(i.secret for i in plan), TOKEN_KEY_SECRET]
    ca = certs.cert_from_pem(store.secrets[CA_SECRET][0]["tls.crt"])
    for identity in plan:
        data, kind = store.secrets[identity.secret]
        assert kind == "kubernetes.io/tls"
        leaf = certs.cert_from_pem(data["tls.crt"])
        leaf.verify_directly_issued_by(ca)
        assert data["ca.crt"] == store.secrets[CA_SECRET][0]["tls.crt"]
        found = identity_of_certificate(leaf, "strife.local")
        assert found is not None and (found.role, found.name) == (identity.role, identity.name)
        assert certs.missing_identity_hosts(leaf, identity.serves) == []
        assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    key = certs.key_from_pem(store.secrets[TOKEN_KEY_SECRET][0]["tls.key"])
    assert isinstance(key, Ed25519PrivateKey)


def test_a_second_run_issues_only_what_is_new() -> None:
    store = FakeSecrets()
    small = parse_topology({"banks": [{"name": "alpha"}], "gateways": {"count": 1}}, Path("."))
    issue_missing(store, planned_identities(small), "strife.local")
    ca_before = store.secrets[CA_SECRET]
    assert issue_missing(store, planned_identities(small), "strife.local") == []
    grown = parse_topology(
        {"banks": [{"name": "alpha"}, {"name": "beta"}], "gateways": {"count": 2}}, Path(".")
    )
    created = issue_missing(store, planned_identities(grown), "strife.local")
    assert created == ["strife-bank-beta", "strife-gateway-gw-2"]
    assert store.secrets[CA_SECRET] is ca_before
    new = certs.cert_from_pem(store.secrets["strife-bank-beta"][0]["tls.crt"])
    new.verify_directly_issued_by(certs.cert_from_pem(ca_before[0]["tls.crt"]))


def test_identity_arguments_round_trip() -> None:
    for identity in (Identity("bank", "east", ("alpha", "beta")), Identity("gateway", "gw-1")):
        assert parse_identity_arg(identity_arg(identity)) == identity
    for bad in ("client/alice", "bank", "bank/", "nobody/x"):
        with pytest.raises(ValueError):
            parse_identity_arg(bad)


class _FakeApi(BaseHTTPRequestHandler):
    """Just enough of the API server's Secrets and ConfigMaps endpoints."""

    secrets: dict[str, Any] = {}
    configmaps: dict[str, Any] = {}
    seen_tokens: list[str] = []
    writes: list[tuple[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _collection(self) -> tuple[dict[str, Any], str]:
        """The store a path names, and the object name after it ("" for the collection)."""
        prefix = "/api/v1/namespaces/payments/"
        assert self.path.startswith(prefix), self.path
        resource, _, name = self.path.removeprefix(prefix).partition("/")
        return {"secrets": self.secrets, "configmaps": self.configmaps}[resource], name

    def _reply(self, code: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.seen_tokens.append(self.headers["Authorization"])
        store, name = self._collection()
        if name in store:
            self._reply(200, store[name])
        else:
            self._reply(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:
        self.seen_tokens.append(self.headers["Authorization"])
        store, name = self._collection()
        assert name == ""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["metadata"]["name"] in store:
            self._reply(409, {"kind": "Status", "code": 409})
            return
        store[body["metadata"]["name"]] = body
        self.writes.append(("POST", body["metadata"]["name"]))
        self._reply(201, body)

    def do_PUT(self) -> None:
        self.seen_tokens.append(self.headers["Authorization"])
        store, name = self._collection()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["metadata"]["name"] == name
        if name not in store:
            self._reply(404, {"kind": "Status", "code": 404})
            return
        store[name] = body
        self.writes.append(("PUT", name))
        self._reply(200, body)


@pytest.fixture
def api_server(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An HTTPS fake of the API server, and a service-account folder for it."""
    identity = pki.identity("balancer", "balancer")
    server = HTTPServer(("127.0.0.1", 0), _FakeApi)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity / "tls.crt", identity / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _FakeApi.secrets, _FakeApi.configmaps, _FakeApi.seen_tokens = {}, {}, []
    _FakeApi.writes = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_text("payments\n")
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_bytes((identity / "ca.crt").read_bytes())
    # The balancer's certificate names 127.0.0.1, as the API server's names its address.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
    try:
        yield sa
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_secrets_are_created_through_the_api(api_server: Path) -> None:
    store = InClusterSecrets(api_server)
    plan = [Identity("bank", "alpha"), Identity("gateway", "gw-1")]
    created = issue_missing(store, plan, "strife.local")
    assert created == [CA_SECRET, "strife-bank-alpha", "strife-gateway-gw-1", TOKEN_KEY_SECRET]
    assert set(_FakeApi.seen_tokens) == {"Bearer sa-token"}
    alpha = _FakeApi.secrets["strife-bank-alpha"]
    assert alpha["type"] == "kubernetes.io/tls" and sorted(alpha["data"]) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    read = store.get("strife-bank-alpha")
    assert read is not None
    assert (
        x509.load_pem_x509_certificate(read["tls.crt"])
        .subject.rfc4514_string()
        .startswith("OU=bank")
    )
    # Run again (a Job retried, a bank added): nothing is created twice.
    assert issue_missing(store, [*plan, Identity("bank", "beta")], "strife.local") == [
        "strife-bank-beta"
    ]


def test_group_files_and_signing_keys_through_the_api(api_server: Path) -> None:
    """The Job's second half: signing keys created once and read back, the group
    file created, left alone while it matches, replaced (PUT) when a client joins."""
    store = InClusterSecrets(api_server)
    vault = GroupLayout("vault", tuple((f"vault-{i}", f"bank-vault-{i}:7400") for i in range(4)))
    written = issue_group_keys(store, [vault], ["gateway/gw-1", "admin/admin"])
    assert written[-1] == "strife-bft-vault" and len(written) == 7
    created = _FakeApi.configmaps["strife-bft-vault"]
    group = Group.from_mapping(tomllib.loads(created["data"][GROUP_FILE]))
    for entry in group.replicas:
        key = base64.b64decode(
            _FakeApi.secrets[f"strife-bft-bank-{entry.name}"]["data"]["signing.key"]
        )
        assert public_key(key) == entry.public_key
    keys_before = dict(_FakeApi.secrets)
    _FakeApi.writes.clear()
    assert issue_group_keys(store, [vault], ["gateway/gw-1", "admin/admin"]) == []
    assert _FakeApi.writes == []
    written = issue_group_keys(store, [vault], ["gateway/gw-1", "gateway/gw-2", "admin/admin"])
    assert written == ["strife-bft-gateway-gw-2", "strife-bft-vault"]
    assert _FakeApi.writes == [("POST", "strife-bft-gateway-gw-2"), ("PUT", "strife-bft-vault")]
    assert all(_FakeApi.secrets[n] == s for n, s in keys_before.items())
    rewritten = Group.from_mapping(
        tomllib.loads(_FakeApi.configmaps["strife-bft-vault"]["data"][GROUP_FILE])
    )
    assert rewritten.replicas == group.replicas
    assert [c.identity for c in rewritten.clients] == [
        "gateway/gw-1",
        "gateway/gw-2",
        "admin/admin",
    ]


def test_the_job_runs_without_the_render_dependencies() -> None:
    """The image has no PyYAML or kubernetes-validate; its Job's command must
    import and reach the API without them."""
    program = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('yaml', 'kubernetes_validate', 'jsonschema'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from strife.deploy.cli import deploy\n"
        "deploy(['issue-secrets', '--identity', 'bank/alpha',"
        " '--bft-group', 'vault=vault-0@bank-vault-0:7400', '--bft-client', 'admin/admin'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    # Outside a cluster it gets as far as looking for the API server.
    assert "KUBERNETES_SERVICE_HOST" in done.stderr, done.stderr
    assert "ImportError" not in done.stderr
