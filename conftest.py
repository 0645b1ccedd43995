"""Test-wide settings that must be in place before Django loads."""

import os

# Tests never depend on a developer's .env: they configure their own stores.
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "tests-only")
