"""Helpers shared by the test modules (importable: pyproject puts tests/ on the path)."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import aiohttp

from ttm_batch.client import ComfyClient, ComfyError

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def expect_failure(client: ComfyClient, workflow: dict, *needles: str, timeout: float = 300) -> str:
    """Queue a bad workflow: it must be refused (node_errors / HTTP 400) or fail with execution_error,
    and the message must contain every needle. Returns the message."""
    try:
        prompt_id = client.queue(workflow)
    except ComfyError as err:
        message = str(err)
    else:
        result = client.wait(prompt_id, timeout=timeout)
        assert result.status == "error", "the bad workflow ran successfully"
        message = result.error["exception_message"]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


TEXT_EVENT = 3
"""ComfyUI's binary websocket event for a node's progress text (protocol.BinaryEventTypes.TEXT)."""


def progress_text(payload: bytes) -> dict | None:
    """A binary websocket frame as ``{"type": "progress_text", "data": {"node", "text"}}``, or None for other
    binary events (previews). Layout (server.send_progress_text): event u32, node-id length u32, node id, text."""
    event, length = struct.unpack(">II", payload[:8])
    if event != TEXT_EVENT:
        return None
    node = payload[8:8 + length].decode()
    return {"type": "progress_text", "data": {"node": node, "text": payload[8 + length:].decode()}}


async def watch_prompt(url: str, prompt: dict, interrupt_on_node: str | None) -> list[dict]:
    """Queue with a websocket open; optionally /interrupt at the first progress of a node. Nodes' progress
    texts (binary frames) are in the list too, as ``progress_text`` messages."""
    client_id = uuid.uuid4().hex
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                prompt_id = (await response.json())["prompt_id"]
            interrupted = False
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    text = progress_text(message.data)
                    if text is not None:
                        messages.append(text)
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if data.get("data", {}).get("prompt_id") not in (None, prompt_id):
                    continue
                messages.append(data)
                if (interrupt_on_node and not interrupted and data["type"] == "progress"
                        and data["data"]["node"] == interrupt_on_node):
                    await (await session.post(f"{url}/interrupt")).release()
                    interrupted = True
                if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
    return messages
