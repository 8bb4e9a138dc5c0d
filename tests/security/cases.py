"""The attacks, one row each: what is tried, and the status and ErrorInfo reason it
must end with. `docs/security.md` lists every row (test_doc_lists_every_case)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.errors import from_rpc_error
from strife.gateway.tokens import AUDIENCE, ISSUER, TokenAuthority, load_or_create_key
from strife.rpc.channels import ChannelPool
from strife.security import certs
from strife.v1 import balancer_pb2, bank_pb2, coordinator_pb2, gateway_pb2, money_pb2

from .harness import (
    LOCALHOST,
    PASSWORDS,
    TIMEOUT_S,
    Attack,
    Session,
    forged_identity,
    no_certificate_credentials,
    spiffe,
)

S = grpc.StatusCode
HANDSHAKE = ""  # refused in the TLS handshake: no call reached a handler, no ErrorInfo


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    attack: str
    code: grpc.StatusCode
    reason: str
    run: Attack
    setup: Attack | None = None
    xfail: str = ""


CASES: list[Case] = []


def case(
    id: str,
    category: str,
    attack: str,
    code: grpc.StatusCode,
    reason: str,
    *,
    setup: Attack | None = None,
    xfail: str = "",
) -> Callable[[Attack], Attack]:
    def register(run: Attack) -> Attack:
        CASES.append(Case(id, category, attack, code, reason, run, setup, xfail))
        return run

    return register


def ref(bank: str, account: str) -> Any:
    return money_pb2.AccountRef(bank=bank, account_id=account)


ADA = ref("alpha", "ada-usd")
BOB = ref("alpha", "bob-usd")
CY = ref("beta", "cy-usd")


# ================================================================ identities


def forged_folder(s: Session, name: str) -> Path:
    return s.world.root / "forged" / name


async def admin_read(s: Session, pool: ChannelPool | None = None, channel: Any = None) -> object:
    """What a stolen admin identity would be used for: a balance at bank alpha."""
    from strife.v1 import bank_pb2_grpc

    stub = bank_pb2_grpc.BankServiceStub(channel) if channel else s.bank_stub(pool or s.admin)
    return await stub.GetAccountBalance(
        bank_pb2.GetAccountBalanceRequest(account_id="ada-usd", bank="alpha"), timeout=TIMEOUT_S
    )


def forged(s: Session, name: str, sans: list[x509.GeneralName], **kwargs: Any) -> ChannelPool:
    ca = s.world.pki.ca
    folder = forged_identity(
        forged_folder(s, name),
        ca.cert,
        signer=kwargs.pop("signer", ca.key),
        issuer=kwargs.pop("issuer", ca.cert.subject),
        sans=sans,
        **kwargs,
    )
    return s.pool(folder)


def issued(s: Session, name: str, ca: certs.Authority, **kwargs: Any) -> ChannelPool:
    folder = forged_folder(s, name)
    if not folder.exists():
        certs.write_identity(
            folder, s.world.pki.ca.cert, certs.issue(ca, role="admin", name="root", **kwargs)
        )
    return s.pool(folder)


@case("id-no-certificate", "identity", "no client certificate", S.UNAVAILABLE, HANDSHAKE)
async def _(s: Session) -> object:
    channel = s.raw_channel(s.world.bank(), no_certificate_credentials(s.world))
    return await admin_read(s, channel=channel)


@case("id-plaintext", "identity", "plaintext, no TLS", S.UNAVAILABLE, HANDSHAKE)
async def _(s: Session) -> object:
    return await admin_read(s, channel=grpc.aio.insecure_channel(s.world.bank()))


@case("id-foreign-ca", "identity", "admin certificate from another CA", S.UNAVAILABLE, HANDSHAKE)
async def _(s: Session) -> object:
    return await admin_read(s, issued(s, "foreign", certs.create_ca(common_name="Other CA")))


@case(
    "id-rogue-ca-same-subject",
    "identity",
    "admin certificate from a rogue CA with the real CA's subject name",
    S.UNAVAILABLE,
    HANDSHAKE,
)
async def _(s: Session) -> object:
    rogue = certs.create_ca()  # same default subject, its own key
    assert rogue.cert.subject == s.world.pki.ca.cert.subject
    return await admin_read(s, issued(s, "rogue", rogue))


@case("id-expired", "identity", "expired admin certificate", S.UNAVAILABLE, HANDSHAKE)
async def _(s: Session) -> object:
    now = dt.datetime.now(dt.UTC)
    return await admin_read(
        s,
        issued(
            s,
            "expired",
            s.world.pki.ca,
            not_before=now - dt.timedelta(days=10),
            not_after=now - dt.timedelta(days=1),
        ),
    )


@case(
    "id-not-yet-valid",
    "identity",
    "admin certificate valid only from tomorrow",
    S.UNAVAILABLE,
    HANDSHAKE,
)
async def _(s: Session) -> object:
    now = dt.datetime.now(dt.UTC)
    return await admin_read(
        s,
        issued(
            s,
            "future",
            s.world.pki.ca,
            not_before=now + dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=30),
        ),
    )


@case(
    "id-wrong-role",
    "identity",
    "balancer certificate reads a bank balance",
    S.PERMISSION_DENIED,
    "ROLE_NOT_ALLOWED",
)
async def _(s: Session) -> object:
    return await admin_read(s, s.as_role("balancer", "balancer"))


@case(
    "id-wrong-name",
    "identity",
    "gateway gw-9 commits as coordinator gw-1",
    S.PERMISSION_DENIED,
    "NOT_COORDINATOR",
)
async def _(s: Session) -> object:
    stub = s.bank_stub(s.as_role("gateway", "gw-9"))
    return await stub.Commit(
        bank_pb2.CommitRequest(transfer_id="t-any", coordinator="gw-1", bank="alpha"),
        timeout=TIMEOUT_S,
    )


@case(
    "id-two-spiffe-ids",
    "identity",
    "two SPIFFE URI SANs (admin and gateway)",
    S.UNAUTHENTICATED,
    "PEER_NOT_AUTHENTICATED",
)
async def _(s: Session) -> object:
    return await admin_read(
        s, forged(s, "two-ids", [LOCALHOST, spiffe("admin", "root"), spiffe("gateway", "gw-1")])
    )


@case(
    "id-no-spiffe-id",
    "identity",
    "our CA, no SPIFFE id at all",
    S.UNAUTHENTICATED,
    "PEER_NOT_AUTHENTICATED",
)
async def _(s: Session) -> object:
    return await admin_read(s, forged(s, "no-id", [LOCALHOST]))


@case(
    "id-other-trust-domain",
    "identity",
    "our CA, SPIFFE id in another trust domain",
    S.UNAUTHENTICATED,
    "PEER_NOT_AUTHENTICATED",
)
async def _(s: Session) -> object:
    return await admin_read(s, forged(s, "other-domain", [spiffe("admin", "root", "evil.example")]))


@case(
    "id-unknown-role",
    "identity",
    "our CA, SPIFFE id with a role Strife does not know",
    S.UNAUTHENTICATED,
    "PEER_NOT_AUTHENTICATED",
)
async def _(s: Session) -> object:
    return await admin_read(s, forged(s, "root-role", [spiffe("root", "admin")]))


@case(
    "id-dns-only-san",
    "identity",
    "our CA, the admin SPIFFE id only in a DNS SAN",
    S.UNAUTHENTICATED,
    "PEER_NOT_AUTHENTICATED",
)
async def _(s: Session) -> object:
    return await admin_read(
        s,
        forged(s, "dns-only", [x509.DNSName(f"spiffe://{certs.DEFAULT_TRUST_DOMAIN}/admin/root")]),
    )


# ================================================================ tokens


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def header_of(alg: str) -> str:
    return b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())


def claims_of(token: str) -> dict[str, Any]:
    return dict(json.loads(unb64(token.split(".")[1])))


def client_thumbprint(s: Session) -> str:
    """RFC 8705's `x5t#S256` of client/default's certificate: the one every case logs in over."""
    pem = (s.world.identity("client", "default") / "tls.crt").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return b64(hashlib.sha256(der).digest())


def mint(s: Session, authority: TokenAuthority) -> str:
    """A token for ada over client/default's certificate, from `authority`."""
    issue: Any = authority.issue
    try:
        token, _ = issue("c-ada", "alpha", ["alpha/ada-usd"], cert_sha256=client_thumbprint(s))
    except TypeError:  # a gateway that binds no token to a certificate
        token, _ = issue("c-ada", "alpha", ["alpha/ada-usd"])
    return str(token)


def signing_key(s: Session) -> Ed25519PrivateKey:
    return load_or_create_key(s.world.cluster.root / "token.key")


async def balance_with(
    s: Session,
    token: str,
    account: Any = ADA,
    pool: ChannelPool | None = None,
    scheme: str = "Bearer",
) -> object:
    return await s.gateway_stub(pool or s.client).GetBalance(
        gateway_pb2.GetBalanceRequest(account=account),
        timeout=TIMEOUT_S,
        metadata=(("authorization", f"{scheme} {token}".strip()),),
    )


@case("tok-missing", "token", "no bearer token", S.UNAUTHENTICATED, "TOKEN_MISSING")
async def _(s: Session) -> object:
    return await balance_with(s, "", scheme="")


@case(
    "tok-wrong-scheme",
    "token",
    "a genuine token sent as `Basic`",
    S.UNAUTHENTICATED,
    "TOKEN_MISSING",
)
async def _(s: Session) -> object:
    return await balance_with(s, await s.token("ada"), scheme="Basic")


@case(
    "tok-forged-signature",
    "token",
    "genuine claims, random signature",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    header, payload, _ = (await s.token("ada")).split(".")
    return await balance_with(s, f"{header}.{payload}.{b64(bytes(64))}")


@case(
    "tok-alg-none",
    "token",
    "`alg: none`, genuine claims, no signature",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    payload = (await s.token("ada")).split(".")[1]
    return await balance_with(s, f"{header_of('none')}.{payload}.")


@case(
    "tok-hs256-public-key",
    "token",
    "HS256 signed with the gateway's public key",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    public = (
        signing_key(s)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    payload = (await s.token("ada")).split(".")[1]
    signed = f"{header_of('HS256')}.{payload}"
    signature = hmac.new(public, signed.encode(), hashlib.sha256).digest()
    return await balance_with(s, f"{signed}.{b64(signature)}")


@case(
    "tok-expired", "token", "genuine key, expired a second ago", S.UNAUTHENTICATED, "TOKEN_EXPIRED"
)
async def _(s: Session) -> object:
    return await balance_with(s, mint(s, TokenAuthority(signing_key(s), ttl_s=-1)))


@case(
    "tok-other-cluster",
    "token",
    "signed by another deployment's key",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    return await balance_with(s, mint(s, TokenAuthority(Ed25519PrivateKey.generate())))


@case(
    "tok-edited-claims",
    "token",
    "ada's token with bob as subject and account",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    header, _, signature = (await s.token("ada")).split(".")
    claims = claims_of(await s.token("ada")) | {"sub": "c-bob", "acc": ["alpha/bob-usd"]}
    return await balance_with(s, f"{header}.{b64(json.dumps(claims).encode())}.{signature}", BOB)


@case(
    "tok-edited-expiry",
    "token",
    "ada's token with its expiry ten years on",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    header, _, signature = (await s.token("ada")).split(".")
    claims = claims_of(await s.token("ada"))
    claims["exp"] = time.time() + 10 * 365 * 86400
    return await balance_with(s, f"{header}.{b64(json.dumps(claims).encode())}.{signature}")


@case(
    "tok-wrong-audience",
    "token",
    "genuine key, another audience",
    S.UNAUTHENTICATED,
    "TOKEN_INVALID",
)
async def _(s: Session) -> object:
    claims = claims_of(await s.token("ada")) | {"aud": "someone-else"}
    return await balance_with(s, jwt.encode(claims, signing_key(s), algorithm="EdDSA"))


@case("tok-no-expiry", "token", "genuine key, no `exp` claim", S.UNAUTHENTICATED, "TOKEN_INVALID")
async def _(s: Session) -> object:
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "c-ada",
        "bank": "alpha",
        "acc": ["alpha/ada-usd"],
        "cnf": {"x5t#S256": client_thumbprint(s)},
    }
    return await balance_with(s, jwt.encode(claims, signing_key(s), algorithm="EdDSA"))


@case("tok-oversized", "token", "a 6 KiB bearer token", S.UNAUTHENTICATED, "TOKEN_INVALID")
async def _(s: Session) -> object:
    header, payload, signature = (await s.token("ada")).split(".")
    return await balance_with(s, f"{header}.{payload}{'A' * 6144}.{signature}")


@case(
    "tok-other-client-certificate",
    "token",
    "ada's genuine token over another client's certificate",
    S.UNAUTHENTICATED,
    "TOKEN_NOT_BOUND_TO_PEER",
)
async def _(s: Session) -> object:
    return await balance_with(s, await s.token("ada"), pool=s.as_role("client", "mallory"))


# ================================================================ authorization


async def pay(
    s: Session,
    *,
    user: str = "ada",
    key: str = "attack-key-0000000001",
    source: Any = ADA,
    target: Any = CY,
    amount: int = 100,
    currency: str = "USD",
    description: str = "",
    gw: str = "gw-1",
) -> Any:
    return await s.gateway_stub(s.client, gw).ProcessPayment(
        gateway_pb2.ProcessPaymentRequest(
            idempotency_key=key,
            from_account=source,
            to_account=target,
            amount=money_pb2.Money(amount_minor=amount, currency=currency),
            description=description,
        ),
        timeout=TIMEOUT_S,
        metadata=await s.auth(user),
    )


async def read(s: Session, method: str, request: Any, user: str = "ada") -> Any:
    stub = s.gateway_stub(s.client)
    return await getattr(stub, method)(request, timeout=TIMEOUT_S, metadata=await s.auth(user))


for _id, _text, _method, _request in [
    (
        "authz-balance-other-customer",
        "ada reads bob's balance",
        "GetBalance",
        gateway_pb2.GetBalanceRequest(account=BOB),
    ),
    (
        "authz-balance-other-bank",
        "ada reads cy's balance at beta",
        "GetBalance",
        gateway_pb2.GetBalanceRequest(account=CY),
    ),
    (
        "authz-balance-unknown-account",
        "ada reads an account nobody has",
        "GetBalance",
        gateway_pb2.GetBalanceRequest(account=ref("alpha", "nobody-usd")),
    ),
    (
        "authz-history-other-customer",
        "ada reads bob's history",
        "GetTransactionHistory",
        gateway_pb2.GetTransactionHistoryRequest(account=BOB),
    ),
    (
        "authz-history-other-bank",
        "ada reads cy's history at beta",
        "GetTransactionHistory",
        gateway_pb2.GetTransactionHistoryRequest(account=CY),
    ),
]:
    case(_id, "authorization", _text, S.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER")(
        partial(read, method=_method, request=_request)
    )


@case(
    "authz-pay-from-other-customer",
    "authorization",
    "ada pays from bob's account",
    S.PERMISSION_DENIED,
    "NOT_ACCOUNT_OWNER",
)
async def _(s: Session) -> object:
    return await pay(s, source=BOB, target=ADA)


@case(
    "authz-pay-from-other-bank",
    "authorization",
    "ada pays from cy's account at beta",
    S.PERMISSION_DENIED,
    "NOT_ACCOUNT_OWNER",
)
async def _(s: Session) -> object:
    return await pay(s, source=CY, target=ADA)


BOB_KEY = "bob-own-payment-key-0001"


async def bob_pays(s: Session) -> object:
    return await pay(s, user="bob", key=BOB_KEY, source=BOB, target=CY, amount=1)


@case(
    "authz-payment-other-customer",
    "authorization",
    "ada asks for bob's payment by its key",
    S.NOT_FOUND,
    "PAYMENT_NOT_FOUND",
    setup=bob_pays,
)
async def _(s: Session) -> object:
    return await read(s, "GetPayment", gateway_pb2.GetPaymentRequest(idempotency_key=BOB_KEY))


BANK_REQUESTS: dict[str, Any] = {
    "AuthenticateCustomer": bank_pb2.AuthenticateCustomerRequest(
        username="ada", password=PASSWORDS["ada"], bank="alpha"
    ),
    "ValidateAccount": bank_pb2.ValidateAccountRequest(account_id="ada-usd", bank="alpha"),
    "GetAccountBalance": bank_pb2.GetAccountBalanceRequest(account_id="ada-usd", bank="alpha"),
    "GetTransactionHistory": bank_pb2.BankHistoryRequest(account_id="ada-usd", bank="alpha"),
    "ProcessTransaction": bank_pb2.ProcessTransactionRequest(
        transfer_id="t-attack-1",
        coordinator="gw-1",
        from_account_id="ada-usd",
        to_account_id="bob-usd",
        amount=money_pb2.Money(amount_minor=100, currency="USD"),
        fingerprint=b"f" * 32,
        bank="alpha",
        customer_id="c-ada",
    ),
    "Prepare": bank_pb2.PrepareRequest(
        transfer_id="t-attack-2",
        coordinator="gw-1",
        leg=bank_pb2.LEG_DEBIT,
        account_id="ada-usd",
        amount=money_pb2.Money(amount_minor=100, currency="USD"),
        fingerprint=b"f" * 32,
        counterparty="beta/cy-usd",
        bank="alpha",
        customer_id="c-ada",
    ),
    "Commit": bank_pb2.CommitRequest(transfer_id="t-attack-2", coordinator="gw-1", bank="alpha"),
    "Abort": bank_pb2.AbortRequest(transfer_id="t-attack-2", coordinator="gw-1", bank="alpha"),
    "DecideTransfers": bank_pb2.DecideTransfersRequest(
        coordinator="gw-1",
        decisions=[bank_pb2.TransferDecision(transfer_id="t-attack-2", commit=True, bank="alpha")],
    ),
    "PrepareTransfers": bank_pb2.PrepareTransfersRequest(prepares=[]),
    "GetTransfer": bank_pb2.GetTransferRequest(transfer_id="t-attack-2", bank="alpha"),
}
BANK_READS = (
    "AuthenticateCustomer",
    "ValidateAccount",
    "GetAccountBalance",
    "GetTransactionHistory",
)
BANK_REQUESTS["PrepareTransfers"].prepares.append(BANK_REQUESTS["Prepare"])
CALLERS = {
    "client": ("client", "default"),
    "bank": ("bank", "beta"),
    "balancer": ("balancer", "balancer"),
    "admin": ("admin", "root"),
    "gateway": ("gateway", "gw-2"),
}


async def call_as(s: Session, caller: str, service: str, method: str, request: Any) -> object:
    pool = s.as_role(*CALLERS[caller])
    stub = {
        "bank": lambda: s.bank_stub(pool),
        "gateway": lambda: s.gateway_stub(pool),
        "coordinator": lambda: s.coordinator_stub(pool),
        "balancer": lambda: s.balancer_stub(pool),
    }[service]()
    metadata = await s.auth("ada") if service == "gateway" else ()
    return await getattr(stub, method)(request, timeout=TIMEOUT_S, metadata=metadata)


async def call_stub(
    s: Session, *, service: str, peer: tuple[str, str], method: str, request: Any
) -> object:
    """`method` of the bank's or the balancer's service, called as `peer` (no token)."""
    pool = s.as_role(*peer)
    stub = s.bank_stub(pool) if service == "bank" else s.balancer_stub(pool)
    return await getattr(stub, method)(request, timeout=TIMEOUT_S)


def denied(caller: str, service: str, method: str, request: Any, reason: str) -> None:
    case(
        f"authz-{service}-{method}-as-{caller}",
        "authorization",
        f"{caller} certificate calls {service} `{method}`",
        S.PERMISSION_DENIED,
        reason,
    )(lambda s: call_as(s, caller, service, method, request))


for _method, _request in BANK_REQUESTS.items():
    _wrong = ("client", "bank", "balancer") + (() if _method in BANK_READS else ("admin",))
    for _caller in _wrong:
        denied(_caller, "bank", _method, _request, "ROLE_NOT_ALLOWED")
for _caller in ("client", "gateway", "balancer", "admin"):
    decision = coordinator_pb2.GetDecisionRequest(transfer_id="t-attack-2")
    denied(_caller, "coordinator", "GetDecision", decision, "ROLE_NOT_ALLOWED")
GATEWAY_REQUESTS: dict[str, Any] = {
    "Login": gateway_pb2.LoginRequest(username="ada", password=PASSWORDS["ada"], bank="alpha"),
    "ProcessPayment": gateway_pb2.ProcessPaymentRequest(
        idempotency_key="attack-key-0000000002",
        from_account=ADA,
        to_account=CY,
        amount=money_pb2.Money(amount_minor=100, currency="USD"),
    ),
    "GetPayment": gateway_pb2.GetPaymentRequest(idempotency_key=BOB_KEY),
    "GetBalance": gateway_pb2.GetBalanceRequest(account=ADA),
    "GetTransactionHistory": gateway_pb2.GetTransactionHistoryRequest(account=ADA),
}
for _method, _request in GATEWAY_REQUESTS.items():
    for _caller in ("gateway", "bank", "balancer"):
        denied(_caller, "gateway", _method, _request, "ROLE_NOT_ALLOWED")


class Lease(TypedDict):
    address: str
    metadata: dict[str, str]


LEASE: Lease = {"address": "127.0.0.1:1", "metadata": {}}
for _caller, _method, _request, _reason in [
    (
        "client",
        "Register",
        balancer_pb2.RegisterRequest(service="gateway", instance="gw-1", **LEASE),
        "ROLE_NOT_ALLOWED",
    ),
    (
        "admin",
        "Deregister",
        balancer_pb2.DeregisterRequest(service="bank", instance="alpha"),
        "ROLE_NOT_ALLOWED",
    ),
    (
        "client",
        "ReportServerLoad",
        balancer_pb2.ReportServerLoadRequest(service="gateway", instance="gw-1", **LEASE),
        "ROLE_NOT_ALLOWED",
    ),
]:
    denied(_caller, "balancer", _method, _request, _reason)
for _id, _text, _peer, _method, _request in [
    (
        "authz-registry-register-other-bank",
        "bank beta registers as bank alpha",
        ("bank", "beta"),
        "Register",
        balancer_pb2.RegisterRequest(service="bank", instance="alpha", **LEASE),
    ),
    (
        "authz-registry-register-other-role",
        "bank beta registers as gateway beta",
        ("bank", "beta"),
        "Register",
        balancer_pb2.RegisterRequest(service="gateway", instance="beta", **LEASE),
    ),
    (
        "authz-registry-deregister-other",
        "gateway gw-1 deregisters gw-2",
        ("gateway", "gw-1"),
        "Deregister",
        balancer_pb2.DeregisterRequest(service="gateway", instance="gw-2"),
    ),
    (
        "authz-registry-heartbeat-other",
        "bank beta heartbeats for bank alpha",
        ("bank", "beta"),
        "ReportServerLoad",
        balancer_pb2.ReportServerLoadRequest(service="bank", instance="alpha", **LEASE),
    ),
]:
    case(_id, "authorization", _text, S.PERMISSION_DENIED, "NOT_INSTANCE_OWNER")(
        partial(call_stub, service="balancer", peer=_peer, method=_method, request=_request)
    )


@case(
    "authz-bank-prepare-as-other-coordinator",
    "authorization",
    "gateway gw-1 prepares a debit naming coordinator gw-2",
    S.PERMISSION_DENIED,
    "NOT_COORDINATOR",
)
async def _(s: Session) -> object:
    request = bank_pb2.PrepareRequest()
    request.CopyFrom(BANK_REQUESTS["Prepare"])
    request.coordinator = "gw-2"
    return await s.bank_stub(s.as_role("gateway", "gw-1")).Prepare(request, timeout=TIMEOUT_S)


@case(
    "authz-bank-decide-as-other-coordinator",
    "authorization",
    "gateway gw-1 decides transfers for coordinator gw-2",
    S.PERMISSION_DENIED,
    "NOT_COORDINATOR",
)
async def _(s: Session) -> object:
    request = bank_pb2.DecideTransfersRequest(
        coordinator="gw-2",
        decisions=[bank_pb2.TransferDecision(transfer_id="t-attack-2", commit=True, bank="alpha")],
    )
    return await s.bank_stub(s.as_role("gateway", "gw-1")).DecideTransfers(
        request, timeout=TIMEOUT_S
    )


# ================================================================ input

KEY = "attack-input-key-000001"
_PAYMENTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("in-pay-amount-zero", "amount 0", {"amount": 0}, "INVALID_AMOUNT"),
    ("in-pay-amount-negative", "amount -1", {"amount": -1}, "INVALID_AMOUNT"),
    ("in-pay-amount-int64-min", "amount -2^63", {"amount": -(2**63)}, "INVALID_AMOUNT"),
    ("in-pay-currency-lowercase", "currency `usd`", {"currency": "usd"}, "INVALID_CURRENCY"),
    ("in-pay-currency-empty", "no currency", {"currency": ""}, "INVALID_CURRENCY"),
    ("in-pay-currency-non-ascii", "currency `ÜSD`", {"currency": "ÜSD"}, "INVALID_CURRENCY"),
    ("in-pay-currency-nul", "currency `US\\0`", {"currency": "US\0"}, "INVALID_CURRENCY"),
    (
        "in-pay-key-too-short",
        "15-character idempotency key",
        {"key": "k" * 15},
        "INVALID_IDEMPOTENCY_KEY",
    ),
    (
        "in-pay-key-too-long",
        "256-character idempotency key",
        {"key": "k" * 256},
        "INVALID_IDEMPOTENCY_KEY",
    ),
    (
        "in-pay-key-nul",
        "idempotency key with a NUL",
        {"key": "attack-key-\0-000000001"},
        "INVALID_IDEMPOTENCY_KEY",
    ),
    (
        "in-pay-key-non-ascii",
        "idempotency key with non-ASCII letters",
        {"key": "attack-kéy-ключ-0000001"},
        "INVALID_IDEMPOTENCY_KEY",
    ),
    (
        "in-pay-description-oversized",
        "257-character description",
        {"description": "d" * 257},
        "INVALID_REQUEST",
    ),
    ("in-pay-same-account", "from and to the same account", {"target": ADA}, "SAME_ACCOUNT"),
]
for _id, _text, _kwargs, _reason in _PAYMENTS:
    case(_id, "input", f"ProcessPayment: {_text}", S.INVALID_ARGUMENT, _reason)(
        partial(pay, **{"key": KEY, **_kwargs})
    )


@case(
    "in-pay-currency-oversized",
    "input",
    "ProcessPayment: a 10,000-character currency",
    S.INVALID_ARGUMENT,
    "INVALID_CURRENCY",
)
async def _(s: Session) -> object:
    return await pay(s, key=KEY, currency="U" * 10_000)


@case(
    "in-pay-oversized-message",
    "input",
    "ProcessPayment of 5 MiB (over the 4 MiB limit)",
    S.RESOURCE_EXHAUSTED,
    "",
)
async def _(s: Session) -> object:
    return await pay(s, key=KEY, description="d" * (5 << 20))


for _id, _text, _request, _code, _reason in [
    (
        "in-history-page-size-negative",
        "page_size -1",
        gateway_pb2.GetTransactionHistoryRequest(account=ADA, page_size=-1),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-history-page-token-garbage",
        "page_token that is not base64",
        gateway_pb2.GetTransactionHistoryRequest(account=ADA, page_token="%%%not-a-token%%%"),
        S.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    ),
    (
        "in-history-page-token-nul",
        "page_token with a NUL",
        gateway_pb2.GetTransactionHistoryRequest(account=ADA, page_token="djEK\0"),
        S.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    ),
    (
        "in-payment-key-too-short",
        "GetPayment with a 3-character key",
        gateway_pb2.GetPaymentRequest(idempotency_key="abc"),
        S.NOT_FOUND,
        "PAYMENT_NOT_FOUND",
    ),
]:
    case(_id, "input", _text, _code, _reason)(
        partial(
            read,
            request=_request,
            method="GetPayment"
            if isinstance(_request, gateway_pb2.GetPaymentRequest)
            else "GetTransactionHistory",
        )
    )


def page_token(account: str, seq: str) -> str:
    return base64.urlsafe_b64encode(f"v1\n{account}\n{seq}".encode()).decode()


@case(
    "in-history-page-token-overflow",
    "input",
    "page_token carrying a 40-digit sequence",
    S.INVALID_ARGUMENT,
    "INVALID_PAGE_TOKEN",
)
async def _(s: Session) -> object:
    request = gateway_pb2.GetTransactionHistoryRequest(
        account=ADA, page_token=page_token("ada-usd", "9" * 40)
    )
    return await read(s, "GetTransactionHistory", request)


async def ada_pays_twice(s: Session) -> object:
    for n in (1, 2):
        await pay(s, key=f"ada-history-key-{n:08d}", target=BOB, amount=1)
    return None


@case(
    "in-history-page-token-truncated",
    "input",
    "a genuine page_token with its last four characters cut off",
    S.INVALID_ARGUMENT,
    "INVALID_PAGE_TOKEN",
    setup=ada_pays_twice,
)
async def _(s: Session) -> object:
    first = await read(
        s,
        "GetTransactionHistory",
        gateway_pb2.GetTransactionHistoryRequest(account=ADA, page_size=1),
    )
    token = first.next_page_token
    assert token
    request = gateway_pb2.GetTransactionHistoryRequest(
        account=ADA, page_size=1, page_token=token[:-4]
    )
    return await read(s, "GetTransactionHistory", request)


async def login(
    s: Session, username: str, password: str, bank: str = "alpha", gw: str = "gw-2"
) -> Any:
    return await s.gateway_stub(s.client, gw).Login(
        gateway_pb2.LoginRequest(username=username, password=password, bank=bank),
        timeout=TIMEOUT_S,
    )


for _id, _text, (_user, _password, _bank), _code, _reason in [
    (
        "in-login-empty",
        "Login with no username",
        ("", "pw", "alpha"),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-login-username-oversized",
        "Login with a 10,000-character username",
        ("u" * 10_000, "pw", "alpha"),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-login-password-oversized",
        "Login with a 100,000-character password",
        ("ada", "p" * 100_000, "alpha"),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-login-unknown-bank",
        "Login at a bank that does not exist",
        ("ada", "pw-ada", "gamma"),
        S.NOT_FOUND,
        "BANK_NOT_FOUND",
    ),
]:
    case(_id, "input", _text, _code, _reason)(
        partial(login, username=_user, password=_password, bank=_bank)
    )


def bank_request(method: str, **changes: Any) -> Any:
    request = type(BANK_REQUESTS[method])()
    request.CopyFrom(BANK_REQUESTS[method])
    for name, value in changes.items():
        if name == "amount":
            request.amount.amount_minor = value
        else:
            setattr(request, name, value)
    return request


for _id, _text, _method, _request, _code, _reason in [
    (
        "in-bank-prepare-negative",
        "Prepare of -100",
        "Prepare",
        bank_request("Prepare", amount=-100),
        S.INVALID_ARGUMENT,
        "INVALID_AMOUNT",
    ),
    (
        "in-bank-prepare-no-leg",
        "Prepare with no leg",
        "Prepare",
        bank_request("Prepare", leg=bank_pb2.LEG_UNSPECIFIED),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-bank-prepare-unknown-bank",
        "Prepare at a bank this server does not serve",
        "Prepare",
        bank_request("Prepare", bank="gamma"),
        S.NOT_FOUND,
        "BANK_NOT_FOUND",
    ),
    (
        "in-bank-process-same-account",
        "ProcessTransaction from and to one account",
        "ProcessTransaction",
        bank_request("ProcessTransaction", to_account_id="ada-usd"),
        S.INVALID_ARGUMENT,
        "SAME_ACCOUNT",
    ),
    (
        "in-bank-transfer-empty-id",
        "GetTransfer with no id",
        "GetTransfer",
        bank_request("GetTransfer", transfer_id=""),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
    (
        "in-bank-decide-oversized-batch",
        "DecideTransfers with 1,001 decisions",
        "DecideTransfers",
        bank_pb2.DecideTransfersRequest(
            coordinator="gw-1",
            decisions=[
                bank_pb2.TransferDecision(transfer_id=f"t-{n}", commit=False, bank="alpha")
                for n in range(1001)
            ],
        ),
        S.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    ),
]:
    case(_id, "input", f"as gateway gw-1: {_text}", _code, _reason)(
        partial(
            call_stub, service="bank", peer=("gateway", "gw-1"), method=_method, request=_request
        )
    )

for _id, _text, _method, _request in [
    (
        "in-lb-register-instance-nul",
        "Register with a NUL in the instance name",
        "Register",
        balancer_pb2.RegisterRequest(service="bank", instance="al\0pha", **LEASE),
    ),
    (
        "in-lb-register-address-oversized",
        "Register with a 10,000-character address",
        "Register",
        balancer_pb2.RegisterRequest(
            service="bank", instance="alpha", address="127.0.0.1:" + "1" * 10_000
        ),
    ),
    (
        "in-lb-register-metadata-flood",
        "Register with 10,000 metadata entries",
        "Register",
        balancer_pb2.RegisterRequest(
            service="bank",
            instance="alpha",
            address="127.0.0.1:1",
            metadata={f"k{n}": "v" for n in range(10_000)},
        ),
    ),
    (
        "in-lb-best-unknown-policy",
        "GetBestServer with policy 99",
        "GetBestServer",
        # An enum value the proto does not define: what a newer or hostile client sends.
        balancer_pb2.GetBestServerRequest(service="gateway", policy=99),  # type: ignore[arg-type]
    ),
    (
        "in-lb-best-exclude-flood",
        "GetBestServer excluding 100,000 names",
        "GetBestServer",
        balancer_pb2.GetBestServerRequest(
            service="gateway", exclude=[f"gw-{n}" for n in range(100_000)]
        ),
    ),
    (
        "in-lb-best-service-non-ascii",
        "GetBestServer for service `g\u00e4t\u0435way`",
        "GetBestServer",
        balancer_pb2.GetBestServerRequest(service="g\u00e4t\u0435way"),
    ),
]:
    case(_id, "input", f"as bank alpha: {_text}", S.INVALID_ARGUMENT, "INVALID_REQUEST")(
        partial(
            call_stub, service="balancer", peer=("bank", "alpha"), method=_method, request=_request
        )
    )


# ================================================================ login


def failure_reason(result: object) -> str:
    if isinstance(result, grpc.aio.AioRpcError):
        return from_rpc_error(result).reason
    return "OK"


@case(
    "login-brute-force",
    "login",
    "5 wrong passwords for victim@alpha, then the right one",
    S.RESOURCE_EXHAUSTED,
    "LOGIN_THROTTLED",
)
async def _(s: Session) -> object:
    for n in range(5):
        try:
            await login(s, "victim", f"guess-{n}", gw="gw-1")
        except grpc.aio.AioRpcError as exc:
            assert from_rpc_error(exc).reason == "INVALID_CREDENTIALS"
    return await login(s, "victim", PASSWORDS["victim"], gw="gw-1")


@case(
    "login-concurrent-brute-force",
    "login",
    "40 concurrent wrong passwords for crowd@alpha, then the right one",
    S.RESOURCE_EXHAUSTED,
    "LOGIN_THROTTLED",
)
async def _(s: Session) -> object:
    results = await asyncio.gather(
        *(login(s, "crowd", f"guess-{n}", gw="gw-1") for n in range(40)), return_exceptions=True
    )
    reasons = [failure_reason(r) for r in results]
    assert reasons.count("INVALID_CREDENTIALS") <= 5, reasons
    assert set(reasons) <= {"INVALID_CREDENTIALS", "LOGIN_THROTTLED"}, reasons
    return await login(s, "crowd", PASSWORDS["crowd"], gw="gw-1")


@case(
    "login-across-replicas",
    "login",
    "3 wrong passwords for split@beta at gw-1, 2 at gw-2, then the right one at gw-2",
    S.RESOURCE_EXHAUSTED,
    "LOGIN_THROTTLED",
)
async def _(s: Session) -> object:
    for n, gw in enumerate(("gw-1", "gw-1", "gw-1", "gw-2", "gw-2")):
        try:
            await login(s, "split", f"guess-{n}", "beta", gw=gw)
        except grpc.aio.AioRpcError as exc:
            assert from_rpc_error(exc).reason == "INVALID_CREDENTIALS"
    return await login(s, "split", PASSWORDS["split"], "beta", gw="gw-2")


for _id, _name in [
    ("login-variant-capitalised", "Ada"),
    ("login-variant-upper", "ADA"),
    ("login-variant-leading-space", " ada"),
    ("login-variant-trailing-space", "ada "),
    ("login-variant-nul", "ada\0"),
    ("login-variant-fullwidth", "\uff41\uff44\uff41"),
    ("login-variant-zero-width", "ada\u200b"),
]:
    case(
        _id,
        "login",
        f"ada's password under the name {_name!r}",
        S.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )(partial(login, username=_name, password=PASSWORDS["ada"]))

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"
