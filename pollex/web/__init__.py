"""The web face: the app, its routes, the middleware, and the two wire formats it streams.

`app` builds the application; `polish` (`/api/polish`) and `openai` (`/v1`) parse their
requests and hand them to `exchange`, which serves one polish over HTTP as JSON or as a
stream in the API's `wires` format; `status` answers health, models and metrics from
memory.
"""
