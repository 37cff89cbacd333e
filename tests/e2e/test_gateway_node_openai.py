"""The official OpenAI Node.js SDK (`openai` from interop/node's lockfile, `make node-deps`)
streaming from the gateway's /v1/chat/completions: a client in another language, written by
nobody here. Skips without node or the package, except in CI (CI=true), where it fails."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from tests.conftest import running_dispatcher
from tests.e2e.conftest import ENV, ROOT
from tests.integration.test_control import pool_commanders
from tests.integration.test_gateway import running_gateway

pytestmark = pytest.mark.anyio

NODE_DIR = ROOT / "interop" / "node"
NODE_TIMEOUT_S = 45.0


def _node_or_skip() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not on PATH (install Node.js 20+)"
    elif not (NODE_DIR / "node_modules" / "openai").is_dir():
        missing = f"{NODE_DIR / 'node_modules' / 'openai'} is missing"
    if missing is None:
        assert node is not None
        return node
    message = f"{missing}: run `make node-deps` (npm ci in interop/node)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Node OpenAI SDK test, but {message}")
    pytest.skip(message)


async def test_the_official_openai_node_sdk_streams_from_the_gateway() -> None:
    node = _node_or_skip()
    async with running_dispatcher() as d, pool_commanders(d, 2), running_gateway(d.address) as gw:
        process = await asyncio.create_subprocess_exec(
            node, "openai_chat.mjs", f"{gw.url}/v1", "What is 2 + 2?",
            cwd=NODE_DIR, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["chunks"] > 2 and "The result of 2 + 2 is 4." in got["content"]
    assert "calculator" in got["reasoning"] and got["finish"] == "stop"
    assert got["models"][0] == "southwest-agent"
    assert got["whole"]["object"] == "chat.completion" and "4" in got["whole"]["content"]
    assert got["whole"]["finish"] == "stop"
