"""The HTML report renders in a real browser: headless Chromium draws every plot."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from skewscope.config import Topics
from streams.replay.capture import write_capture
from streams.replay.cli import main
from tests.test_backtest import straggler_label, synthetic_messages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
VERDICT_RGB = (0xE6, 0x39, 0x46)  # COLORS["A"] in streams/replay/svg.py
LABEL_RGB = (0xF4, 0xA2, 0x61)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    capture, labels = tmp / "run.avro", tmp / "labels.jsonl"
    write_capture(capture, synthetic_messages(Topics()))
    labels.write_text(json.dumps(straggler_label()) + "\n")
    html = tmp / "report.html"
    assert (
        main(
            [
                "backtest",
                "--file",
                str(capture),
                "--labels",
                str(labels),
                "--features",
                "--html",
                str(html),
            ]
        )
        == 0
    )
    return html


def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text


def test_every_plot_is_drawn_by_the_browser(report: Path) -> None:
    dom = _chromium("--dump-dom", report.as_uri())
    body = re.search(r'<body data-plots="(\d+)" data-plots-drawn="(\d+)"', dom)
    assert body, "the page's measuring script did not run"
    plots, drawn = int(body.group(1)), int(body.group(2))
    assert plots >= 2 and drawn == plots
    timeline = re.search(r'<div class="entity"><h3>dep0/rank5</h3>(<svg.*?</svg>)', dom, re.S)
    assert timeline, "no timeline for the straggler rank"
    svg = timeline.group(1)
    assert 'class="label-span"' in svg and 'class="verdict-span"' in svg
    points = re.findall(r'<polyline class="series" points="([^"]+)"', svg)
    assert points and all(len(p.split()) > 10 for p in points)
    width = float(re.search(r'data-drawn-width="([\d.]+)"', svg).group(1))  # type: ignore[union-attr]
    assert width > 100


def _png_rgb(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) to HxWx3."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6) and header[12] == 0
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(width * bpp, dtype=np.int32)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prev) & 0xFF
        else:
            row = np.zeros(width * bpp, dtype=np.int32)
            for x in range(width * bpp):
                left = row[x - bpp] if x >= bpp else 0
                if kind == 1:
                    row[x] = (line[x] + left) & 0xFF
                elif kind == 3:
                    row[x] = (line[x] + (left + prev[x]) // 2) & 0xFF
                else:
                    up_left = prev[x - bpp] if x >= bpp else 0
                    p = left + prev[x] - up_left
                    pa, pb, pc = abs(p - left), abs(p - prev[x]), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else prev[x] if pb <= pc else up_left
                    row[x] = (line[x] + pred) & 0xFF
            out[y] = row
    return out.reshape(height, width, bpp)[:, :, :3]


def test_screenshot_shows_label_and_verdict_spans(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1000,1400", f"--screenshot={shot}", report.as_uri())
    pixels = _png_rgb(shot)
    assert pixels.std() > 10, "the screenshot is blank"
    for rgb in (VERDICT_RGB, LABEL_RGB):
        close = (np.abs(pixels - np.array(rgb)).max(axis=2) <= 12).sum()
        assert close > 200, f"no area in colour {rgb}: the spans were not drawn"
