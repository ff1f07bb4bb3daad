"""The Ask Sage-compatible API: `/user` and `/server`, as the Ask Sage API and its Python
client (`asksageclient`) call them, over the same services as `/v1` (docs/api.md,
"Ask Sage–compatible API"). Each base is a sub-app of its own (`asksage.app.sub_app`),
with its own error handler: every answer is `{"response": ..., "status": <code>}`."""
