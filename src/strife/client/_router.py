"""Which gateway replica to call: a fixed list, or the balancer's recommendation.

The client sticks to one replica while it answers (its `GetPayment` knows the
payments it coordinated) and moves on when it stops answering. A replica
that failed is avoided for `failed_ttl_s`, then may be chosen again: it may
have been restarted, and a fixed list has nowhere else to go.

That avoidance is a preference among replicas. Beside it each address has a
circuit breaker (`circuits`, see `strife.rpc.breaker`): after `failures`
consecutive calls without an answer its circuit opens and calls to it fail
fast, without a network call, until a half-open probe finds it answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from strife.errors import StrifeError
from strife.observability.logging import get_logger
from strife.rpc.breaker import BreakerConfig
from strife.rpc.circuits import Circuits
from strife.rpc.discovery import BalancerClient

_log = get_logger("strife.client.router")

GATEWAY_SERVICE = "gateway"
MAX_GATEWAYS = 64


class GatewayRouter:
    """Picks the gateway address for the next call and remembers which ones failed."""

    def __init__(
        self,
        *,
        gateways: Sequence[str] = (),
        balancer: BalancerClient | None = None,
        failed_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        breaker: BreakerConfig | None = None,
    ) -> None:
        if not gateways and balancer is None:
            raise ValueError("give gateway addresses or a balancer")
        if len(gateways) > MAX_GATEWAYS:
            raise ValueError(f"at most {MAX_GATEWAYS} gateway addresses")
        if failed_ttl_s <= 0:
            raise ValueError("failed_ttl_s must be positive")
        self._gateways = list(dict.fromkeys(gateways))
        self._balancer = balancer
        self._failed_ttl_s = failed_ttl_s
        self._clock = clock
        self._current: str | None = None
        self._next_index = 0
        self._failed_until: dict[str, float] = {}
        self._instances: dict[str, str] = {}  # address -> instance, learnt from the balancer
        # Per gateway address: the client's calls fail fast while its circuit is open.
        self.circuits = Circuits("gateway", breaker or BreakerConfig(failures=3), clock=clock)

    @property
    def current(self) -> str | None:
        """The replica in use (None before the first choice or right after a failure)."""
        return self._current

    def known(self) -> list[str]:
        """Every gateway address worth watching or asking, the current one first."""
        known = [*self._gateways, *self._instances]
        if self._current is not None:
            known.insert(0, self._current)
        return list(dict.fromkeys(known))[:MAX_GATEWAYS]

    def failed(self, address: str) -> None:
        """`address` did not answer: avoid it for a while and choose again next time."""
        self._failed_until[address] = self._clock() + self._failed_ttl_s
        if self._current == address:
            _log.info("gateway_unreachable", gateway=address)
            self._current = None

    def succeeded(self, address: str) -> None:
        self._failed_until.pop(address, None)

    def _failing(self, address: str) -> bool:
        if self.circuits.blocked(address) is not None:
            return True
        until = self._failed_until.get(address)
        if until is None:
            return False
        if until <= self._clock():
            del self._failed_until[address]
            return False
        return True

    async def target(self) -> str:
        """The gateway for the next call (asks the balancer only after a change)."""
        if self._current is not None and not self._failing(self._current):
            return self._current
        chosen = await (self._from_balancer() if self._balancer else self._from_list())
        if chosen != self._current:
            _log.info("gateway_chosen", gateway=chosen, previous=self._current)
        self._current = chosen
        return chosen

    async def _from_list(self) -> str:
        count = len(self._gateways)
        for step in range(count):
            index = (self._next_index + step) % count
            if not self._failing(self._gateways[index]):
                self._next_index = (index + 1) % count
                return self._gateways[index]
        # All failed recently: the one that failed longest ago is the best bet.
        return min(self._gateways, key=lambda a: self._failed_until.get(a, 0.0))

    async def _from_balancer(self) -> str:
        assert self._balancer is not None
        failing = [a for a in list(self._failed_until) if self._failing(a)]
        if failing:
            try:
                # Names to exclude: the balancer excludes instances, we know addresses.
                servers = await self._balancer.list(GATEWAY_SERVICE)
            except StrifeError:
                pass  # the cached names below are still good enough
            else:
                self._instances = {s.address: s.instance for s in servers}
        exclude = [self._instances[a] for a in failing if a in self._instances]
        address = await self._balancer.best(GATEWAY_SERVICE, exclude=exclude)
        if address in failing:
            # The balancer still names a replica we cannot reach (its lease has
            # not run out yet); any other live one it listed is better.
            others = [a for a in self._instances if not self._failing(a)]
            if others:
                return others[0]
        return address
