"""Generic test settings shared by every test module.

Hypothesis profiles are sized for the project's 2-core CI machine: ``ci`` (the default under
CI=true) keeps the property tests to a few seconds in all; ``dev`` is the same locally; ``thorough``
(HYPOTHESIS_PROFILE=thorough) is for hunting bugs by hand. No deadline: a shared CI machine's
timing noise must not fail a property.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
