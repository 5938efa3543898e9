"""`deepconf serve`: DeepConf as an OpenAI-compatible server in front of upstream servers.

One application, one module per concern:

    app.py          routes, auth, limits, the per-request log line (create_app)
    wire.py         request models, the config they map to, response/chunk/error objects
    body.py         reading a body: size limit, JSON, nesting, text UTF-8 can carry (all 4xx)
    solve.py        one request's solve: run it, watch the client, stream progress, map errors
    upstreams.py    backends per (model, api) over one connection pool, idle ones bounded
    connections.py  who may hold a connection: head deadline, connection bound, accept batches
    command.py      the `deepconf serve` command (registered by deepconf/cli.py)

Importing this package imports nothing else, so `deepconf --help` stays fast, and
`serve-model` uses connections.py without loading the proxy.
"""
