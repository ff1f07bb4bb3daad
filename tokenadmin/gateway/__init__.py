"""The OpenAI-compatible metering gateway (`/openai/v1`) and document ingestion
(`POST /v1/ingest`): every token that passes through is metered by usage.service."""
