"""SM(m), the signed-messages algorithm of the same paper: any number of traitors.

The commander signs its order; each lieutenant that relays an order adds its
own signature to the chain. A relay can then be withheld but not altered: a
traitor that changes the value of a chain it received sends a forgery, which
every receiver drops. A lieutenant collects the distinct validly signed
values it saw (its set V) and decides the one value in V, or RETREAT when V
is empty or holds both (a commander that signed two orders is a traitor, and
every loyal lieutenant learns both, so they agree).

A loyal lieutenant relays a value only the first time it sees it, so SM(m)
sends at most (n-1) + 2(n-1)(n-2) messages. Signatures are Ed25519 over a
domain-separated encoding of the value and the chain; keys come from the
run's seed so a run is reproducible. Traitors do not share keys: a traitor
cannot sign in a co-traitor's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from strife.bft.generals import COMMANDER, DEFAULT, Order, Setup, Verdict

DOMAIN = b"strife/bft/generals/sm/v1\x00"


@dataclass(frozen=True, slots=True)
class SignedOrder:
    """`value` with the signatures of `signers` in order, the commander first;
    signature i covers the value, signers 0..i and signatures 0..i-1."""

    value: Order
    signers: tuple[int, ...]
    signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SignedMessage:
    order: SignedOrder
    receiver: int
    valid: bool

    @property
    def sender(self) -> int:
        return self.order.signers[-1]

    @property
    def round(self) -> int:
        return len(self.order.signers)


def signed_bytes(value: Order, signers: Sequence[int], signatures: Sequence[bytes]) -> bytes:
    head = f"{value.value}|{','.join(map(str, signers))}|".encode()
    return DOMAIN + head + b"".join(len(s).to_bytes(2, "big") + s for s in signatures)


def key_of(seed: int, general: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"strife-generals-sm/{seed}/{general}".encode()).digest()
    )


def sign(
    key: Ed25519PrivateKey, general: int, order: SignedOrder | None, value: Order
) -> SignedOrder:
    """`order` extended by `general`'s signature (`order` None: the commander's
    own order, `value`)."""
    signers = (general,) if order is None else (*order.signers, general)
    previous = () if order is None else order.signatures
    signature = key.sign(signed_bytes(value, signers, previous))
    return SignedOrder(value, signers, (*previous, signature))


def verify(order: SignedOrder, keys: Mapping[int, Ed25519PublicKey]) -> bool:
    """Every signature valid, by distinct generals, the commander's first."""
    signers = order.signers
    if not signers or signers[0] != COMMANDER or len(set(signers)) != len(signers):
        return False
    if len(order.signatures) != len(signers) or any(g not in keys for g in signers):
        return False
    for i, general in enumerate(signers):
        message = signed_bytes(order.value, signers[: i + 1], order.signatures[:i])
        try:
            keys[general].verify(order.signatures[i], message)
        except InvalidSignature:
            return False
    return True


def choice(values: set[Order]) -> Order:
    return next(iter(values)) if len(values) == 1 else DEFAULT


@dataclass(frozen=True)
class SignedOutcome:
    setup: Setup
    rounds: list[list[SignedMessage]]
    seen: dict[int, set[Order]]

    @property
    def decisions(self) -> dict[int, Order]:
        return {g: choice(v) for g, v in self.seen.items()}

    @property
    def guaranteed(self) -> bool:
        """SM(m) copes with m traitors however few the generals."""
        return len(self.setup.traitors) <= self.setup.m

    def verdict(self) -> Verdict:
        decided = set(self.decisions.values())
        setup = self.setup
        validity = decided <= {setup.order} if setup.is_loyal(COMMANDER) else None
        return Verdict(len(decided) <= 1, validity, self.guaranteed)


def run_signed(setup: Setup) -> SignedOutcome:
    """SM(m) in m + 1 synchronous rounds. A traitor's strategy says, per relay,
    what value to send: None withholds it, its own value relays it, and any
    other value is a forgery (the old signatures over a new value)."""
    n, m, seed = setup.n, setup.m, setup.seed
    private = {g: key_of(seed, g) for g in range(n)}
    public = {g: k.public_key() for g, k in private.items()}
    seen: dict[int, set[Order]] = {g: set() for g in setup.lieutenants}

    def relay(sender: int, order: SignedOrder | None, held: Order) -> list[SignedMessage]:
        path = () if order is None else order.signers
        out = []
        for receiver in setup.lieutenants:
            if receiver == sender or receiver in path:
                continue
            value = setup.strategy(sender).send(sender, path, receiver, held, seed)
            if value is None:
                continue
            if order is not None and value is not held:
                forged = SignedOrder(value, order.signers, order.signatures)
                signed = sign(private[sender], sender, forged, value)
            else:
                signed = sign(private[sender], sender, order, value)
            out.append(SignedMessage(signed, receiver, verify(signed, public)))
        return out

    rounds = [relay(COMMANDER, None, setup.order)]
    for _ in range(m):
        relays: list[SignedMessage] = []
        for msg in rounds[-1]:
            if not msg.valid or msg.order.value in seen[msg.receiver]:
                continue
            seen[msg.receiver].add(msg.order.value)
            relays += relay(msg.receiver, msg.order, msg.order.value)
        rounds.append(relays)
    for msg in rounds[-1]:
        if msg.valid:
            seen[msg.receiver].add(msg.order.value)
    loyal = {g: v for g, v in seen.items() if setup.is_loyal(g)}
    return SignedOutcome(setup, rounds, loyal)
