"""Circuit breakers (the resilience4j model), retry budgets and an event-loop lag probe for
Tenantry's clients of other systems: the Kafka producer, identity's JWKS, the rate
limiter's Redis."""

from tenantry_resilience.breaker import (
    BreakerConfig,
    BreakerGuard,
    BreakerRegistry,
    BreakerSnapshot,
    BreakerState,
    CallNotPermitted,
    CallOutcome,
    CircuitBreaker,
    SlidingWindowType,
    StateListener,
)
from tenantry_resilience.loop_lag import LoopLagProbe
from tenantry_resilience.retry_budget import (
    RetryBudget,
    record_first_attempt,
    retry_if_budget,
    stop_when_budget_exhausted,
)

__all__ = [
    "BreakerConfig",
    "BreakerGuard",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CallNotPermitted",
    "CallOutcome",
    "CircuitBreaker",
    "LoopLagProbe",
    "RetryBudget",
    "SlidingWindowType",
    "StateListener",
    "record_first_attempt",
    "retry_if_budget",
    "stop_when_budget_exhausted",
]
