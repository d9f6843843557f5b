"""The hypothesis settings every property test of the unit tier uses."""

from hypothesis import HealthCheck, settings

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written under .hypothesis/
    suppress_health_check=[HealthCheck.too_slow],
)
