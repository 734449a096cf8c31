"""The emulator helper: skips without node, fails with the install command without the package."""

from __future__ import annotations

import aimock as helper
import pytest


def test_without_node_the_tests_skip_and_say_why(monkeypatch) -> None:
    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    with pytest.raises(helper.AimockUnavailable) as e:
        helper.start_aimock()
    assert e.value.skip and "node is not installed" in str(e.value)


def test_without_the_package_the_tests_fail_with_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(helper, "CLI", tmp_path / "node_modules" / "cli.js")
    with pytest.raises(helper.AimockUnavailable) as e:
        helper.start_aimock()
    assert not e.value.skip and "npm ci --prefix tests/emulator" in str(e.value)


def test_the_pinned_version_runs_and_resets(aimock) -> None:
    import json
    import urllib.request

    assert json.loads((helper.CLI.parents[1] / "package.json").read_text())["version"] == helper.VERSION
    with urllib.request.urlopen(aimock.base_url + "/fine_tuning/jobs") as resp:
        assert json.loads(resp.read())["data"] == []
    assert len(aimock.journal()) == 1
    aimock.reset()
    assert aimock.journal() == []
