"""Headless Chromium (Debian's `chromium`) for the dashboard tests: load a page from
disk the way a person's browser does, and read back the DOM it rendered."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

from conftest import skip_unless_ci

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--allow-file-access-from-files"]


@dataclasses.dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list["Node"] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts + [c.text for c in self.children]).split())

    def iter(self, tag: Optional[str] = None) -> Iterator["Node"]:
        for child in self.children:
            if tag is None or child.tag == tag:
                yield child
            yield from child.iter(tag)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _Builder(HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].texts.append(data)


class Browser:
    def __init__(self) -> None:
        self.exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if self.exe is None:
            skip_unless_ci("no chromium: apt-get install chromium (or bash scripts/setup.sh)")

    def _run(self, *args: str) -> str:
        out = subprocess.run([self.exe, *FLAGS, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def load(self, url: str) -> Node:
        """The DOM after Chromium loaded and rendered `url`."""
        builder = _Builder()
        builder.feed(self._run("--dump-dom", url))
        return builder.root

    def follow(self, page_url: str, link: Node) -> str:
        """The URL a click on `link` opens (its href resolved against the page)."""
        return urljoin(page_url, link.attrs["href"])

    def screenshot(self, url: str, out: Path, size: str = "1280,800") -> Path:
        self._run(f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", url)
        assert out.stat().st_size > 1000, f"{out}: empty screenshot"
        return out


def path_of(url: str) -> Path:
    return Path(url2pathname(urlparse(url).path))
