"""A file audit device cannot be redirected between its path check and its open: a
directory on the way swapped for a symlink makes the open fail instead of following."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.server.security import audit_files as audit


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "logs").symlink_to(outside)  # the swap, already done when the open runs
    checked = (str(allowed / "logs" / "audit.log"), str(allowed))
    # The check saw a real directory (as it was a moment before the swap).
    monkeypatch.setattr(audit, "_allowed_location", lambda target, dirs: checked)
    monkeypatch.setattr(audit, "resolve_file_path", lambda target, dirs: checked[0])
    with pytest.raises(OSError):
        audit.open_beneath(checked[0], [str(allowed)], os.O_WRONLY | os.O_CREAT)
    assert list(outside.iterdir()) == []


def test_a_file_inside_the_allowed_directory_opens(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    target = tmp_path / "logs" / "audit.log"
    fd = audit.open_beneath(str(target), [str(tmp_path)], os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert target.exists() and (target.stat().st_mode & 0o777) == 0o600
