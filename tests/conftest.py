"""Settings shared by every test module: Hypothesis profiles and the regtest node fixture.

Hypothesis profiles are sized for the project's 2-core CI machine (the property tests take a few
seconds in all); none has a deadline, because a shared machine's timing noise must not fail a
property, and every one prints the ``@reproduce_failure`` blob of a failing example:

- ``ci``, loaded when ``CI`` is set (``.ci/run`` sets ``CI=true``): derandomized, with no example
  database, so every CI run tries the same examples. A CI failure then reproduces anywhere with
  ``CI=true pytest ...``, and a green run means what the previous one meant.
- ``dev``, loaded otherwise: the same sizes with a random search, so local runs keep exploring
  new examples (a failing one is saved under ``.hypothesis/`` and tried first next time).
- ``thorough`` (``HYPOTHESIS_PROFILE=thorough``): for hunting bugs by hand.

``HYPOTHESIS_PROFILE`` names a profile explicitly and wins over ``CI``.

:mod:`tests.helpers.bitcoin_node` is loaded as a plugin, so any test may take the session's
``regtest`` fixture as an argument.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ("tests.helpers.bitcoin_node",)

settings.register_profile("ci", max_examples=60, derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])


def _profile() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"


settings.load_profile(_profile())
