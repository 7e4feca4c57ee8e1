"""A small client for ComfyUI's HTTP API (no ComfyUI import; standard library only).

Queue an API-format workflow, wait for it, and fetch what it wrote. The demo, the tests and
the batch runner use it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)


class ComfyError(RuntimeError):
    """The server refused a prompt, a prompt failed, or the server could not be reached."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


class ComfyUnreachable(ComfyError):
    """The server did not answer (connection refused or reset, timeout, websocket closed)."""


@dataclass(frozen=True)
class OutputFile:
    """A file a node reported in its UI output (``/history``)."""

    node_id: str
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class PromptResult:
    """A finished prompt: its history entry and the files its nodes reported."""

    prompt_id: str
    status: str  # "success" or "error"
    history: Mapping[str, Any]

    @property
    def error(self) -> Mapping[str, Any] | None:
        """The ``execution_error`` message data, if the prompt failed."""
        for kind, data in self.history.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return data
        return None

    def files(self) -> Iterator[OutputFile]:
        for node_id, output in self.history.get("outputs", {}).items():
            for key in ("images", "gifs", "videos", "trajectories"):
                for item in output.get(key, []) or []:
                    if isinstance(item, Mapping) and "filename" in item:
                        yield OutputFile(node_id, item["filename"], item.get("subfolder", ""),
                                         item.get("type", "output"))


class ComfyClient:
    """Talks to one ComfyUI server, e.g. ``ComfyClient("http://127.0.0.1:8188")``."""

    def __init__(self, base_url: str, timeout: float = 30.0, client_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                details = json.loads(text)
            except json.JSONDecodeError:
                details = text
            raise ComfyError(f"{method} {path} -> HTTP {err.code}: {_describe(details)}", details) from None
        except (urllib.error.URLError, OSError) as err:
            raise ComfyUnreachable(f"cannot reach ComfyUI at {self.base_url} ({err}); is the server running?") from None
        return json.loads(payload) if payload else None

    def object_info(self) -> dict[str, Any]:
        return self._request("GET", "/object_info")

    def queue(self, prompt: Mapping[str, Any], prompt_id: str | None = None) -> str:
        """Queue an API-format prompt; returns its prompt id.

        ``prompt_id`` names the prompt before it is sent (ComfyUI takes the caller's id), so a
        caller that is cancelled while the request is in flight still knows what to delete.
        Raises ComfyError when the server refuses it (HTTP 400) or reports ``node_errors``
        (ComfyUI answers 200 and runs the valid part when only some outputs are invalid).
        """
        body = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        answer = self._request("POST", "/prompt", body)
        if answer.get("node_errors"):
            raise ComfyError(f"the server refused nodes: {_describe(answer)}", answer)
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        entry = self._request("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        return entry.get(prompt_id) if entry else None

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.25) -> PromptResult:
        """Wait until the prompt has finished; raises ComfyError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return PromptResult(prompt_id, entry["status"].get("status_str", "success"), entry)
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: Mapping[str, Any], timeout: float = 600.0) -> PromptResult:
        """Queue and wait; raises ComfyError with the node's message if execution failed."""
        result = self.wait(self.queue(prompt), timeout)
        if result.status != "success":
            error = result.error or {}
            raise ComfyError(f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                             f"{error.get('exception_message', 'unknown error')}", result)
        return result

    def view(self, file: OutputFile) -> bytes:
        query = urllib.parse.urlencode({"filename": file.filename, "subfolder": file.subfolder, "type": file.type})
        request = urllib.request.Request(f"{self.base_url}/view?{query}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise ComfyError(f"cannot fetch {file.filename} from {self.base_url}: HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ComfyUnreachable(f"cannot fetch {file.filename} from {self.base_url}: {err}") from None

    def upload_image(self, data: bytes, name: str, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload an image into the server's input folder (/upload/image); returns its input name."""
        boundary = uuid.uuid4().hex
        fields = [("overwrite", "true" if overwrite else "false"), ("subfolder", subfolder), ("type", "input")]
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
                        for key, value in fields)
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.base_url}/upload/image", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise ComfyError(f"upload of {name} refused: HTTP {err.code} {err.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ComfyUnreachable(f"cannot reach ComfyUI at {self.base_url} ({err})") from None
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """Remove prompts that are still waiting in the server's queue."""
        self._request("POST", "/queue", {"delete": list(prompt_ids)})

    def socket(self, timeout: float = 1.0) -> ProgressSocket:
        """The websocket on which the server reports this client's prompts."""
        return ProgressSocket(self.base_url, self.client_id, timeout)


class ProgressSocket:
    """ComfyUI's /ws websocket for one client id: status, progress and execution messages.

    Use as a context manager; ``receive()`` returns one decoded message, or None when
    nothing arrived within the timeout (so callers can check for cancellation).
    """

    def __init__(self, base_url: str, client_id: str, timeout: float = 1.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        self.url = f"{scheme}://{parsed.netloc}{parsed.path}/ws?clientId={urllib.parse.quote(client_id)}"
        self.timeout = timeout
        self._connection = None

    def __enter__(self) -> ProgressSocket:
        import websocket  # websocket-client; imported here so the rest of the client needs only the stdlib

        try:
            self._connection = websocket.create_connection(self.url, timeout=max(self.timeout, 5.0))
        except (OSError, websocket.WebSocketException) as err:
            raise ComfyUnreachable(f"cannot open the websocket {self.url} ({err})") from None
        self._connection.settimeout(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def receive(self) -> dict[str, Any] | None:
        import websocket

        try:
            message = self._connection.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as err:
            raise ComfyUnreachable(f"the websocket {self.url} closed ({err})") from None
        if isinstance(message, bytes):  # binary frames carry preview images
            return {"type": "binary"}
        return json.loads(message)


def _describe(details: Any) -> str:
    """A one-line summary of ComfyUI's error JSON (error message plus node error details)."""
    if not isinstance(details, Mapping):
        return str(details)[:500]
    parts = []
    error = details.get("error")
    if isinstance(error, Mapping):
        parts.append(f"{error.get('message', '')} {error.get('details', '')}".strip())
    for node_id, node in (details.get("node_errors") or {}).items():
        for item in node.get("errors", []):
            parts.append(f"node {node_id} ({node.get('class_type')}): {item.get('details') or item.get('message')}")
    return "; ".join(p for p in parts if p) or json.dumps(details)[:500]
