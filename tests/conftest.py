"""Shared fixtures: fake upstreams on loopback, and pollex itself over real sockets."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from yarl import URL

if TYPE_CHECKING:  # the types of pytest-aiohttp's fixtures (its 1.1 names them)
    from pytest_aiohttp import AiohttpClient, AiohttpServer

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeAnthropic, FakeLlamaServer, FakeOllama, FakeUpstream
from helpers import Client, fast_config

from pollex.adapters.http import make_session
from pollex.web.app import create_app


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required `stream_writer` argument."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Mocked(aioresponses):
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, *args, **kwargs)


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    """aioresponses patches every ClientSession: only the adapter unit tests ask for it."""
    with _Mocked() as mocked:
        yield mocked


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session made the way pollex makes its adapters' sessions."""
    async with make_session(1.0) as s:
        yield s


@dataclasses.dataclass
class Running:
    """A fake upstream served on a fixed loopback port, which can be stopped and restarted."""

    fake: Any
    server: TestServer
    start_server: Callable[..., Awaitable[TestServer]]
    url: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.url = str(self.server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        await self.server.close()

    async def restart(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.server = await self.start_server(self.fake.app(), port=port)


ServeFake = Callable[[FakeUpstream], Awaitable[Running]]


@pytest.fixture
def serve_fake(aiohttp_server: AiohttpServer) -> ServeFake:
    async def start(fake: FakeUpstream) -> Running:
        async def start_server(app: web.Application, port: int | None = None) -> TestServer:
            return await aiohttp_server(app, port=port, shutdown_timeout=0.2)

        return Running(fake, await start_server(fake.app()), start_server)

    return start


@pytest.fixture
async def llama(serve_fake: ServeFake) -> Running:
    return await serve_fake(FakeLlamaServer())


@pytest.fixture
async def ollama(serve_fake: ServeFake) -> Running:
    return await serve_fake(FakeOllama())


@pytest.fixture
async def anthropic(serve_fake: ServeFake) -> Running:
    return await serve_fake(FakeAnthropic())


@pytest.fixture
def pollex(aiohttp_client: AiohttpClient) -> Callable[..., Awaitable[Client]]:
    """Start pollex on a real loopback socket with the given settings."""

    async def start(**overrides: Any) -> Client:
        return await aiohttp_client(
            create_app(fast_config(**overrides)), server_kwargs={"shutdown_timeout": 0.2}
        )

    return start
