"""Shared test fixtures. Service fixtures (nginx, SeaweedFS, ...) live in tests/services/."""

pytest_plugins: list[str] = [
]
