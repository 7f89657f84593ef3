"""Shared test fixtures. Service fixtures (nginx, SeaweedFS, ...) live in tests/services/."""

pytest_plugins: list[str] = [
    "tests.services.nginx", "tests.services.seaweed", "tests.services.badhttp",
]
