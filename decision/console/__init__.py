"""``decision console``: the agent desk, the kiosk screen and the results, in a browser.

A small web application (Starlette, Jinja2, htmx with server-sent events, served by
uvicorn; no JavaScript build step) that is a gRPC client of a running decision server,
like any other caller: ``app.create_app(target, settings)`` builds it, ``cli`` serves it.
It never opens the store and never hands the server's token to a browser.

- ``grpc_client``: the calls the pages make (GetProfile, Decide, Track, GetReport),
  errors as ``ServerError`` / ``ServerUnavailable``;
- ``views``: replies as plain view models for the templates;
- ``results``: the results view's figures, charts and learning curves from the
  server's reports (GetReport);
- ``live``: how an open agent page follows its customer (polled GetProfile, SSE);
- ``security``: loopback-only or a login, same-origin writes, response headers;
- ``templates/``, ``static/``: the pages, the stylesheet, htmx and its SSE extension
  (vendored, see ``VENDORED.md``).
"""

#: identifier kinds offered in the agent desk's search, the default first (the server's
#: defaults, loyalty cards and e-mail hashes early: what a caller can tell an agent)
DEFAULT_KINDS = ("customer_id", "loyalty_id", "email_sha256", "phone_sha256", "cookie",
                 "device_id")
