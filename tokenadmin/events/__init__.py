"""Events and alerts: what an administrator (or the member concerned) should hear of,
recorded once per crossing (docs/events.md)."""
