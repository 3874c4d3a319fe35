"""The guest packages: the test identity provider `hearth_example` only where it is asked for."""

from __future__ import annotations

from pathlib import Path

from hearth.guest import packages as guestpkg


def test_the_guest_packages_carry_hearth_example_only_for_tests(tmp_path: Path) -> None:
    prod = guestpkg.install(tmp_path / "g", guestpkg.packages(for_tests=False))
    test = guestpkg.install(tmp_path / "g", guestpkg.packages(for_tests=True))
    assert (prod / "hearth_agent").is_dir() and not (prod / "hearth_example").exists()
    assert (test / "hearth_example").is_dir() and prod != test
