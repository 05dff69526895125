"""Hypothesis profiles of the suite, chosen by the ``HYPOTHESIS_PROFILE`` environment variable.

- ``ci`` (the default, locally too): derandomized, so every run draws the same examples; no
  example database; no deadline. ``tests/test_fuzz.py`` sends 3,000 requests to each POST
  endpoint.
- ``fuzz`` (``make fuzz``): a new random seed per run, printed when the fuzz tests start (set
  ``CDS_FUZZ_SEED`` to repeat a run); 20,000 requests to each POST endpoint.

The number of fuzz requests per endpoint is not the profile's ``max_examples`` (which every other
property test without its own ``max_examples`` inherits): ``tests/test_fuzz.py`` reads it from
:data:`FUZZ_EXAMPLES_PER_ENDPOINT`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES_PER_ENDPOINT = {"ci": 3000, "fuzz": 20000}

_COMMON = settings(
    settings.get_profile("default"),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", _COMMON, derandomize=True)
settings.register_profile("fuzz", _COMMON, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
