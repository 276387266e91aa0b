"""Test configuration.

Triton kernels run on the CPU through Triton's interpreter. The variable must be set before
anything imports triton, which is why it lives at the very top of conftest.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# Interpreted Triton kernels take seconds per example, so hypothesis gets no deadline and a small
# budget of examples by default; `HYPOTHESIS_PROFILE=thorough` raises it for local bug hunts.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
