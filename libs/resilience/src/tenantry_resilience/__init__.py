"""Circuit breakers (the resilience4j model) and retry budgets for Tenantry's clients of
other systems: the Kafka producer, identity's JWKS."""

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
    "RetryBudget",
    "SlidingWindowType",
    "StateListener",
    "record_first_attempt",
    "retry_if_budget",
    "stop_when_budget_exhausted",
]
