"""The README's tour of the gateway, as a newcomer runs it: the demo loaded as `make run`
loads it, a server, then the official `openai` package and the unmodified `asksageclient`
with the member key the demo prints, on the built-in demo model. Every token they use is
in the member's used tokens and the journal, and the journal verifies."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from asksageclient import AskSageClient  # type: ignore[import-untyped]
from openai import OpenAI

from tests.servers import started_servers
from tokenadmin import demo
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.migrate import upgrade

pytestmark = pytest.mark.filterwarnings(
    # asksageclient logs with a format of its own and `requests` warns on nothing here;
    # the clients' own deprecation notices are not this project's to fix.
    "ignore::DeprecationWarning"
)


def _load_demo(url: str) -> demo.DemoResult:
    async def main() -> demo.DemoResult:
        database = Database(url, pool_size=2)
        try:
            return await demo.load(database, Settings(database_url=url))
        finally:
            await database.dispose()

    return asyncio.run(main())


def _used(base: str, loaded: demo.DemoResult) -> tuple[int, int]:
    """The member's used tokens of each kind, as the administrator's key reads them."""
    headers = {"Authorization": f"Bearer {loaded.admin_key}"}
    found = httpx.get(
        f"{base}/v1/organizations/{loaded.org_id}/users",
        params={"search": loaded.member_email},
        headers=headers,
        timeout=10,
    )
    assert found.status_code == 200, found.text
    [user] = found.json()["users"]
    return user["inference"]["used"], user["training"]["used"]


def _verify(url: str) -> bool:
    async def main() -> bool:
        database = Database(url, pool_size=2)
        try:
            return (await database.read(verify)).clean
        finally:
            await database.dispose()

    return asyncio.run(main())


def test_the_readme_tour_meters_an_openai_client_and_asksageclient_end_to_end(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'tour.db'}"
    upgrade(url)
    loaded = _load_demo(url)
    shown = demo.how_to(loaded, "http://127.0.0.1:8000")
    assert re.search(r"Member key\s+ta_\S+", shown)
    assert "/openai/v1" in shown
    with started_servers(url, 1) as [server]:
        base = server.url
        member = loaded.member_email
        before = _used(base, loaded)

        llm = OpenAI(base_url=f"{base}/openai/v1", api_key=loaded.member_key, max_retries=0)
        assert {m.id for m in llm.models.list()} >= {"demo-echo", "demo-echo-premium"}
        reply = llm.chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "Hello"}]
        )
        assert "Hello" in (reply.choices[0].message.content or "")
        assert reply.usage is not None
        charged = reply.usage.prompt_tokens + reply.usage.completion_tokens  # rates 1 and 1

        text = []
        streamed_usage = None
        for chunk in llm.chat.completions.create(
            model="demo-echo-premium",
            messages=[{"role": "user", "content": "Hello again"}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                streamed_usage = chunk.usage
        assert "Hello again" in "".join(text)
        assert streamed_usage is not None
        charged += 2 * streamed_usage.prompt_tokens + 4 * streamed_usage.completion_tokens

        ask = AskSageClient(
            member,
            loaded.member_key,
            user_base_url=f"{base}/user",
            server_base_url=f"{base}/server",
        )
        answer = ask.query("Hello from Ask Sage", model="demo-echo")
        assert answer["status"] == 200
        assert "Hello from Ask Sage" in answer["message"]
        charged += answer["usage"]["total_tokens"]
        trained = ask.train("A paragraph for the dataset", force_dataset="handbook")
        assert trained["status"] == 200

        inference, training = _used(base, loaded)
        assert inference - before[0] == charged
        assert training - before[1] == trained["tokens"] > 0
        assert ask.count_monthly_tokens()["response"] == inference
        assert ask.count_monthly_teach_tokens()["response"] == training
    assert _verify(url)
