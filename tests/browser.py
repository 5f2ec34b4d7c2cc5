"""Debian's headless Chromium driven over the DevTools protocol (a websocket from aiohttp):
navigate, evaluate JavaScript, resize, take screenshots. No driver library, nothing downloaded."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from .helpers import wait_until

BINARY = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser with one page."""

    def __init__(self, proc: asyncio.subprocess.Process, http: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.proc, self.http, self.ws = proc, http, ws
        self._ids = itertools.count(1)

    @classmethod
    async def start(cls, profile: Path, width: int = 1280, height: int = 900) -> Chromium:
        """Launch the browser (its profile in `profile`) and attach to its first page."""
        assert BINARY, "chromium is not installed (make test installs Debian's package)"
        proc = await asyncio.create_subprocess_exec(
            BINARY, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-extensions", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("chromium exited before it listened")
                found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                port = int(found[1]) if found else None
        asyncio.create_task(_drain(proc.stderr))  # keep its log from filling the pipe
        http = aiohttp.ClientSession()
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        ws = await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return cls(proc, http, ws)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        ident = next(self._ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(30):
            async for msg in self.ws:
                data = msg.json()
                if data.get("id") == ident:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})  # type: ignore[no-any-return]
        raise RuntimeError("the DevTools connection closed")

    async def goto(self, url: str) -> None:
        """Open `url` and wait until the document has loaded."""
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        await wait_until(lambda: self._loaded(), 30, f"{url} loaded", every=0.1)

    async def _loaded(self) -> bool:
        return bool(await self.eval("document.readyState") == "complete")

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Resize the page's viewport (a phone: mobile=True)."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=mobile)

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        """Save a PNG of the page."""
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        """Close the connection and the browser."""
        await self.ws.close()
        await self.http.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
