from __future__ import annotations

from conftest import collect_events


async def test_json_and_sse_through_llama(llama, ollama, pollex) -> None:
    client = await pollex(llamacpp_url=llama.url, llamacpp_model="qwen-gpu", ollama_url=ollama.url)
    resp = await client.post("/api/polish", json={"text": "i goes to store yesterday"})
    assert resp.status == 200
    body = await resp.json()
    assert body["polished"] == "i goes to store yesterday"
    events = await collect_events(
        str(client.make_url("/api/polish")), {"text": "x", "stream": True}
    )
    assert [e.event for e in events] == ["start"] + ["delta"] * 5 + ["done"]
