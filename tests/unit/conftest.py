"""Unit tests: pure cores on a fake clock, and adapters with injected dependencies."""

import pytest

# The shared slot helpers assert as they go: rewritten, a failure shows its values.
pytest.register_assert_rewrite("tests.unit.slot_helpers")
