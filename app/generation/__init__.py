"""Generation: a pure continuous-batching engine, two transports that run it (a thread of the
server or a worker process), and the server's side that turns requests into specs and
turns into tokens and metrics.

The package itself imports nothing: the worker process imports `app.generation.worker`, which
must not pull in the web stack that the server's side (`service`, `choices`, `build`) uses.
"""
