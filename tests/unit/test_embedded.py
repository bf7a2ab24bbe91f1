from __future__ import annotations

import os
import stat
from pathlib import Path

from broker.server.storage.embedded import _world_usable, world_usable_copy


def test_world_usable_copy_of_an_unreachable_install(tmp_path: Path) -> None:
    hidden = tmp_path / "root-only"
    install = hidden / "pgserver" / "pginstall"
    (install / "bin").mkdir(parents=True)
    (hidden / "pgserver.libs").mkdir()
    (hidden / "pgserver.libs" / "libpq-abc.so.5").write_text("x")
    (install / "lib").mkdir()
    binary = install / "bin" / "postgres"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o700)
    (install / "lib" / "libpq.so").write_text("x")
    os.symlink("libpq.so", install / "lib" / "libpq.so.5")
    hidden.chmod(0o700)
    try:
        assert not _world_usable(binary)
        copy = world_usable_copy(install)
        assert _world_usable(copy / "bin" / "postgres")
        assert (copy / "lib" / "libpq.so").stat().st_mode & stat.S_IROTH
        assert os.readlink(copy / "lib" / "libpq.so.5") == "libpq.so"
        # the rpath $ORIGIN/../../../pgserver.libs still resolves from bin/
        assert (copy / "bin" / ".." / ".." / ".." / "pgserver.libs" / "libpq-abc.so.5").exists()
        assert world_usable_copy(install) == copy  # made once, then reused
    finally:
        hidden.chmod(0o755)
        import shutil

        shutil.rmtree(world_usable_copy(install).parent.parent, ignore_errors=True)
