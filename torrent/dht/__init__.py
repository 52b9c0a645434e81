"""Mainline DHT (BEP 5, with BEP 32 IPv6 and BEP 42 node id checks), sans-IO.

- :mod:`.krpc`: the KRPC codec, every length and count bounded;
- :mod:`.routing`: the routing table (K = 8 buckets, node states, BEP 42);
- :mod:`.lookup`: an iterative ``get_peers`` / ``find_node`` lookup;
- :mod:`.node`: the server side (answers queries, tokens, peer store, rate limits).

None of them does I/O or reads a clock: bytes and ``now`` go in, bytes and
actions come out. The UDP adapter carries them out.
"""

from __future__ import annotations

__all__: list[str] = []
