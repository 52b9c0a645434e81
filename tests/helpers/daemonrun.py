"""Run the ``fasttorrent`` CLI with tests/helpers/fakeengine.py as its engine.

    python tests/helpers/daemonrun.py daemon --listen 127.0.0.1:0 ...

``torrent.service`` is looked up when ``fasttorrent daemon`` starts
(``daemon._make_engine``); this wrapper puts the test double in its place
in ``sys.modules`` first, or, with ``FASTTORRENT_TEST_NO_ENGINE=1``, makes the
import fail as in an installation without the engine.  The package itself
carries no hook for any of it.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if os.environ.get("FASTTORRENT_TEST_NO_ENGINE") == "1":
        sys.modules["torrent.service"] = None  # type: ignore[assignment]
    else:
        from helpers import fakeengine

        sys.modules["torrent.service"] = fakeengine
    from torrent.cli import main

    sys.exit(main(sys.argv[1:]))
