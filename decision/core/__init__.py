"""The decision core: plain Python over the store and the compiled catalog; no gRPC.

- ``engine``    ``Engine``, the facade front ends call: the store, the active catalog
                and its lifecycle (load, reload, follow, warm);
- ``prepared``  ``Prepared``: a catalog as the decision path reads it;
- ``respond``   Respond: one decision now (``Decide``, ``DecideBatch``);
- ``inspire``   Inspire: a campaign's decisions for a whole segment, to a send file;
- ``ingest``    events: validated, applied in group commits, deduplicated;
- ``profiles``  profile reads, writes, merges and erasure;
- ``actions``   delayed actions fired when due;
- ``tails``     the memo of what decisions read from a profile's msgpack tail;
- ``requests``  checks of request values shared by all of the above.
"""
