"""Other clients driven by ``fasttorrent bench`` and the tests: libtorrent seeder and downloader.

Each module runs as ``python -m torrent.tools.benchclients.NAME`` and needs the
libtorrent Python bindings (PyPI ``libtorrent``); nothing here is imported by
fasttorrent itself.
"""
