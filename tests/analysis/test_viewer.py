"""The trajectory viewer page in headless Chromium, and the static trajectory plot.

The page is loaded from ``file://`` by Debian's Chromium (``--dump-dom``: the DOM after the
page's script ran; console messages arrive on stderr as ``CONSOLE`` lines). Expected values
come from the sampler's record and hand-built profiles, never from the viewer's own code.
"""

import io
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from dllm_jax.analysis import plot_trajectory, trajectory_figure, write_viewer
from dllm_jax.analysis.plot import ZONE_GID
from dllm_jax.errors import ConfigError
from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate
from dllm_jax.sampling.record import IMHRecord, Trajectory

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_TIMEOUT_S = 900  # apt-get downloads about 100 MB


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's headless-capable Chromium, installed with apt-get on first use (as root)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing and installing it needs root: run "
                    f"`apt-get install -y chromium`")
    try:
        res = _apt("install", "-y", "--no-install-recommends", "chromium",
                   timeout=INSTALL_TIMEOUT_S)
        if res.returncode != 0 and "Unable to locate package" in res.stderr:
            _apt("update", timeout=300)
            res = _apt("install", "-y", "--no-install-recommends", "chromium",
                       timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`apt-get install chromium` did not finish in {INSTALL_TIMEOUT_S} s")
    if res.returncode != 0 or not CHROMIUM.exists():
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        pytest.fail(f"`apt-get install chromium` failed (exit {res.returncode}): {tail}")
    return CHROMIUM




# --- the page in Chromium ---------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
MASK_GLYPH = "\u2592"
PAYLOAD = "<script>alert(1)</script>"


class Dom(HTMLParser):
    """Every element of a serialised DOM with its attributes and its own text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        e = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self._open)}
        self.elements.append(e)
        if tag not in VOID:
            self._open.append(e)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def find(self, tag, cls=None, **attrs):
        return [e for e in self.elements if e["tag"] == tag
                and (cls is None or cls in e["attrs"].get("class", "").split())
                and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def inside(self, outer, tag, cls=None):
        return [e for e in self.find(tag, cls) if any(p is outer for p in e["parents"])]


def load(chromium: Path, page: Path, tmp_path: Path, fragment: str = "") -> tuple[Dom, list]:
    """The DOM after the page's script ran, and the console lines Chromium logged."""
    res = subprocess.run(
        [str(chromium), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom",
         page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return Dom(res.stdout), [line for line in res.stderr.splitlines() if ":CONSOLE" in line]


def test_console_errors_are_seen(chromium, tmp_path):
    """The check below can fail: a page whose script throws is reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><p id=a>x</p><script>undefinedFunction();</script>")
    dom, console = load(chromium, page, tmp_path)
    assert dom.find("p", id="a") and any("undefinedFunction" in c for c in console)


PROMPT = [3, 17, 22, 9, 41]


@pytest.fixture(scope="module")
def llada_run(sharp_llada):
    """Two samples of one prompt with their trajectory (8 steps, 8 positions, 2 blocks)."""
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4, temperature=0.9, threshold=0.5)
    out = generate(sharp_llada, np.array([PROMPT] * 2, np.int32), config=cfg, key=5,
                   record=True)
    return np.asarray(out.sequences), out.trajectory


def vocab_decoder(payload_id: int):
    vocab = [f"w{i}" for i in range(64)]
    vocab[payload_id] = PAYLOAD
    return vocab, lambda ids: "".join(vocab[i] for i in ids)


def test_viewer_shows_the_completion_forming(chromium, llada_run, tmp_path):
    seqs, traj = llada_run
    p, g = len(PROMPT), seqs.shape[1] - len(PROMPT)
    vocab, decode = vocab_decoder(int(seqs[0, p]))  # row 0's first token is the payload
    title = "sample </title><script>alert(2)</script>"
    page = write_viewer(tmp_path / "v.html", traj, seqs, p, decode=decode, title=title)
    raw = page.read_text()
    assert "http://" not in raw.replace("http://www.w3.org/2000/svg", "") and "https://" not in raw
    assert "<script>alert" not in raw
    step_map = np.asarray(traj.step_map)
    for t in (0, 3, 7):
        dom, console = load(chromium, page, tmp_path, f"#step={t}")
        assert console == []
        assert len(dom.find("script")) == 2  # the data and the viewer's script, nothing else
        assert dom.find("title")[0]["text"] == title
        for row in range(2):
            section = dom.find("section", "sample", data_row=str(row))[0]
            cells = dom.inside(section, "span", "tok")
            assert len(cells) == g
            assert [int(c["attrs"]["data-step"]) for c in cells] == step_map[row].tolist()
            for i, c in enumerate(cells):
                s = int(step_map[row, i])
                want = vocab[seqs[row, p + i]] if s <= t else MASK_GLYPH
                assert c["text"] == want, (t, row, i)
                assert ("now" in c["attrs"]["class"].split()) == (s == t)
    assert any(c["text"] == PAYLOAD for c in dom.find("span", "tok"))  # shown as text


def hand_trajectory() -> Trajectory:
    """2 rows, 6 positions, 10 steps; row 0's steps 3 and 7 committed nothing, its margin
    collapses at steps 5, 6 and 8, and position 5 was never committed.

    Row 0's zone by hand: over its 8 valid steps ``1 - CM`` is 0.1 five times and 1.0 three
    times: mean 0.4375, population std 0.4357, z = 1.29 at steps 5, 6, 8 (-0.77 elsewhere);
    RoEC is flat (z = 0). So one zone: steps 5 .. 8, i.e. [5, 9), with 3 valid steps.
    """
    b, t = 2, 10
    valid = np.ones((b, t), bool)
    valid[0, [3, 7]] = False
    margin = np.where(valid, 0.9, 0.0)
    margin[0, [5, 6, 8]] = 0.0
    entropy = np.where(valid, np.linspace(2.0, 0.5, t), 0.0)
    step_map = np.array([[0, 1, 2, 4, 5, -1], [0, 2, 4, 6, 8, 9]], np.int32)
    conf = np.array([[0.9, 0.5, 0.2, 0.7, 0.1, 0.0], [0.3] * 6], np.float32)
    return Trajectory(step_map=step_map, confidence=conf, entropy=entropy, margin=margin,
                      roec=np.zeros((b, t)), num_committed=valid.astype(np.int32), valid=valid)


HAND_ZONE = (5, 9)
HAND_RUNS = [(0, 3), (4, 7), (8, 10)]  # row 0's runs of valid steps


def test_viewer_marks_zones_gaps_and_alternatives(chromium, tmp_path):
    traj = hand_trajectory()
    seqs = np.concatenate([np.full((2, 3), 7), np.arange(12).reshape(2, 6)], 1)
    alt_ids = np.stack([seqs[:, 3:], seqs[:, 3:] + 20], -1)
    alt_probs = np.broadcast_to([0.625, 0.25], (2, 6, 2))
    _, decode = vocab_decoder(63)
    page = write_viewer(tmp_path / "h.html", traj, seqs, 3, decode=decode, rows=[0],
                        alternatives=(alt_ids, alt_probs))
    dom, console = load(chromium, page, tmp_path, "#step=4&pos=0.2")
    assert console == []
    assert [s["attrs"]["data-row"] for s in dom.find("section", "sample")] == ["0"]
    zones = [(int(r["attrs"]["data-start"]), int(r["attrs"]["data-end"]))
             for r in dom.find("rect", "zone")]
    assert zones == [HAND_ZONE]
    assert [int(r["attrs"]["data-start"]) for r in dom.find("rect", "empty")] == [3, 7]
    for series in ("H", "CM", "RoEC"):  # one line piece per run of valid steps
        d = dom.find("path", "curve", data_series=series)[0]["attrs"]["d"]
        assert d.count("M") == len(HAND_RUNS)
    cells = dom.find("span", "tok")
    assert [c["text"] for c in cells] == ["w0", "w1", "w2", "w3", MASK_GLYPH, MASK_GLYPH]
    details = dom.find("div", "details")[0]
    lines = [e["text"] for e in dom.inside(details, "div")]
    assert lines[1] == "committed at step 2, confidence 0.200"
    assert lines[3:] == ["  0.625  w2", "  0.250  w22"]


def test_imh_page_shows_blocks_and_acceptance(chromium, sharp_llada, tmp_path):
    cfg = IMHConfig(alpha=4.0, num_candidates=3, gen_length=8, block_length=4, steps=4)
    out = generate(sharp_llada, [[3, 4, 5]], config=cfg, key=0, record=True)
    seqs, acc = np.asarray(out.sequences), np.asarray(out.trajectory.acceptance)
    page = write_viewer(tmp_path / "imh.html", None, seqs, 3, imh=out.trajectory)
    dom, console = load(chromium, page, tmp_path)
    assert console == []
    assert "hidden" in dom.find("div", id="controls")[0]["attrs"]
    blocks = dom.find("span", "block")
    assert len(blocks) == 2
    for b, blk in enumerate(blocks):
        cells = dom.inside(blk, "span", "tok")
        assert [c["text"] for c in cells] == [str(i) for i in seqs[0, 3 + 4 * b: 7 + 4 * b]]
        assert all("data-step" not in c["attrs"] for c in cells)
        label = dom.inside(blk, "span", "acc")[0]["text"]
        assert label == f"block {b}: acceptance {acc[0, b]:.2f}"
    assert "rejected candidates are not shown" in dom.find("p", id="note")[0]["text"]
    # The IMHRecord as generate() returns it in ``trajectory`` is read the same way.
    again = write_viewer(tmp_path / "imh2.html", out.trajectory, seqs, 3)
    assert again.read_text() == page.read_text()


@pytest.mark.parametrize("kwargs,msg", [
    ({"rows": [2]}, "rows [2] must be"),
    ({"prompt_length": 9}, "prompt_length 9 must leave"),
    ({"alternatives": (np.zeros((2, 6, 3)), np.zeros((2, 6, 2)))}, "alternatives probs"),
    ({"imh": IMHRecord(np.zeros((2, 4)), np.zeros(2))}, "not both"),
])
def test_viewer_bad_input_is_one_line(tmp_path, kwargs, msg):
    args = {"prompt_length": 3, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(msg)):
        write_viewer(tmp_path / "x.html", hand_trajectory(), np.zeros((2, 9), int), **args)


# --- the static plot --------------------------------------------------------------------------
def _integers_in_view(ticks, lim):
    ticks = np.asarray(ticks, np.float64)
    return len(ticks) > 0 and (ticks == np.round(ticks)).all() and (
        (ticks >= min(lim)) & (ticks <= max(lim))).all()


def test_plot_ticks_zones_gaps_and_token_text(tmp_path):
    traj = hand_trajectory()
    seqs = np.concatenate([np.full((2, 4), 9), [[5, 6, 7, 8, 10, 11]] * 2], 1)  # P = 4
    vocab = {i: f"t{i}" for i in range(12)}
    vocab[6] = "$x"  # matplotlib would read "$...$" as mathematics
    fig, zones = trajectory_figure(traj, 0, tokens=seqs,
                                   decode=lambda ids: "".join(vocab[i] for i in ids))
    fig.savefig(io.BytesIO(), format="png")  # draws every artist
    assert [(z.start, z.end, z.num_steps) for z in zones] == [HAND_ZONE + (3,)]
    ax_step, ax_conf, *curves = fig.axes[:5]
    for ax in (ax_step, ax_conf, *curves):
        assert _integers_in_view(ax.get_xticks(), ax.get_xlim())
        assert len(ax.get_xticks(minor=True)) == 0
    step_bar = fig.axes[5]
    assert _integers_in_view(step_bar.get_yticks(), step_bar.get_ylim())
    assert len(step_bar.get_yticks(minor=True)) == 0
    texts = sorted((t.get_position()[0], t.get_text()) for t in ax_step.texts)
    assert texts == [(0, "t5"), (1, "$x"), (2, "t7"), (3, "t8"), (4, "t10")]  # 5: uncommitted
    valid, entropy = np.asarray(traj.valid)[0], np.asarray(traj.entropy)[0]
    want = {(t, t + 1, float(entropy[t])) for t in range(10) if valid[t]}
    for ax in curves:
        spans = [p for p in ax.patches if p.get_gid() == ZONE_GID]
        assert [(p.get_bbox().x0, p.get_bbox().x1) for p in spans] == [HAND_ZONE]
        assert ax.get_xlim() == (0, 10)
    x, y = curves[0].lines[0].get_data()
    flat = {(x[i], x[i + 1], y[i]) for i in range(len(x) - 1)
            if np.isfinite(x[i:i + 2]).all() and y[i] == y[i + 1]}
    assert flat == want  # step t over [t, t + 1), nothing over the empty steps 3 and 7
    breaks = np.flatnonzero(np.isnan(x))
    assert len(breaks) == len(HAND_RUNS) - 1


def test_plot_trajectory_writes_png(tmp_path):
    path = tmp_path / "t.png"
    zones = plot_trajectory(hand_trajectory(), str(path), row=0, title="hand-built")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(z.start, z.end) for z in zones] == [HAND_ZONE]
    with pytest.raises(ConfigError, match="decode needs tokens"):
        plot_trajectory(hand_trajectory(), str(path), decode=str)
