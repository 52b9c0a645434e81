"""Tools around the engine: ``fasttorrent bench`` and ``fasttorrent demo``, and what they share.

- :mod:`.bench`: whole downloads by several clients from one loopback swarm.
- :mod:`.demo`: the main job on a generated payload, with nothing set up.
- :mod:`.payload`: the one payload generator, and checking a download against it.
- :mod:`.seeders`: local seeders (``fasttorrent seed``, libtorrent): their
  commands, starting them, knowing when they serve.
- :mod:`.procs`: the process groups the tools start, measured and stopped whole.
- :mod:`.benchclients`: libtorrent's seeder and downloader, run as ``python -m``.

The engine never imports this package; the command line imports a tool only
to run it.
"""

__all__: list[str] = []
