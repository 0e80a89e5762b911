"""The app: its handlers as units, then the live server through gradio_client and a browser."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cvae.app import logic
from cvae.data.simulator import integrate_positions

ROOT = Path(__file__).resolve().parent.parent
N_PAST, N_FUTURE = 2, 10


@pytest.fixture(scope="module")
def bundled():
    sources = logic.find_sources([])
    source = sources["bundled test sequences"]
    model = logic.cached_model(logic.BUNDLED_MODEL)
    frames, cond = logic.load_sequence(source.sequences[0])
    return source, model, frames[:12], cond[:12]


def test_bundled_assets_are_found():
    sources, models = logic.find_sources([]), logic.find_models([])
    assert len(sources["bundled test sequences"].sequences) == 16
    assert sources["bundled test sequences"].kinematics is not None
    (label,) = models
    assert label.startswith("bundled · fixed prior") and "test PSNR" in label


def test_runs_folder_checkpoints_are_listed(tmp_path):
    shutil.copytree(logic.BUNDLED_MODEL, tmp_path / "runs" / "exp1" / "best", ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(logic.BUNDLED_MODEL, tmp_path / "runs" / "exp1" / ".best.tmp")
    models = logic.find_models([tmp_path / "runs"])
    assert len(models) == 2
    assert any(label.startswith("runs/exp1/best · ") and "not evaluated" in label for label in models)


def test_table_round_trip_and_transforms(bundled):
    _, _, _, cond = bundled
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    assert len(rows) == 10 and rows[0][:2] == [1, 2] and rows[-1][:2] == [10, 11]
    table = logic.parse_table(rows, N_PAST, N_FUTURE)
    np.testing.assert_allclose(table, cond[1:11], atol=1e-5)
    assert (logic.transform(table, "zero")[:, :2] == 0).all()
    np.testing.assert_allclose(logic.transform(table, "reverse")[:, :2], -table[:, :2])
    np.testing.assert_allclose(logic.transform(table, "scale", 3)[:, :2], 3 * table[:, :2], rtol=1e-6)
    rot = logic.transform(table, "rotate", 90)
    np.testing.assert_allclose(rot[:, 0], -table[:, 1], atol=1e-6)
    np.testing.assert_allclose(rot[:, 1], table[:, 0], atol=1e-6)
    a, b = logic.transform(table, "noise", 0.05, seed=1), logic.transform(table, "noise", 0.05, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, table)
    assert np.array_equal(a[:, 2:], table[:, 2:])  # lift and grip stay


def test_positions_rederived_with_documented_kinematics(bundled):
    source, _, _, cond = bundled
    table = logic.transform(logic.parse_table(logic.table_rows(cond, N_PAST, N_FUTURE), N_PAST, N_FUTURE), "zero")
    full = logic.rederive_positions(logic.with_table(cond, table, N_PAST), N_PAST, source.kinematics)
    np.testing.assert_allclose(full[1:, 4:6], np.repeat(cond[1:2, 4:6], 11, 0), atol=1e-6)  # the arm stays put
    scaled = logic.with_table(cond, logic.transform(table, "scale", 1), N_PAST)
    scaled[1:11, :2] = cond[1:11, :2] * 2
    derived = logic.rederive_positions(scaled, N_PAST, source.kinematics)
    np.testing.assert_allclose(derived[1:, 4:], integrate_positions(cond[1, 4:], scaled[1:, :4]), atol=1e-5)
    assert np.array_equal(logic.rederive_positions(scaled, N_PAST, None), scaled)  # unknown kinematics: unchanged


@pytest.mark.parametrize("edit,message", [
    (lambda r: r[3].__setitem__(2, "abc"), r"row 4, column dx: 'abc' is not a number"),
    (lambda r: r[0].__setitem__(3, float("nan")), r"row 1, column dy: nan is not a finite number"),
    (lambda r: r[9].__setitem__(8, "inf"), r"row 10, column z: inf is not a finite number"),
    (lambda r: r[2].__setitem__(2, 50), r"row 3, column dx: 50 is absurd"),
    (lambda r: r[5].__setitem__(7, -1e6), r"row 6, column y: -1e\+06 is absurd"),
    (lambda r: r.append(list(r[0])), r"exactly 10 rows.*it has 11"),
    (lambda r: r.pop(), r"exactly 10 rows.*it has 9"),
    (lambda r: r.clear(), r"the action table is empty"),
    (lambda r: r[1].pop(), r"row 2 has 8 columns"),
])
def test_bad_table_input_is_named(bundled, edit, message):
    _, _, _, cond = bundled
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    edit(rows)
    with pytest.raises(logic.InputError, match=message):
        logic.parse_table(rows, N_PAST, N_FUTURE)


def test_prediction_is_seeded_and_responds_to_actions(bundled, responsive_runs):
    _, _, frames, cond = bundled
    model = logic.cached_model(responsive_runs / "responsive" / "best")
    edited = logic.with_table(cond, logic.transform(cond[1:11], "reverse"), N_PAST)
    a = logic.predict(model, frames, cond, edited, 8, seed=3)
    b = logic.predict(model, frames, cond, edited, 8, seed=3)
    assert a.original.shape == (8, 10, 3, 64, 64)
    assert np.array_equal(a.edited.numpy(), b.edited.numpy())
    assert (a.original - a.edited).abs().mean() > 5e-4  # reversing the push changes the future
    assert a.uncertainty().shape == (64, 64) and a.uncertainty().max() > 0
    assert 0 <= a.best < 8
    assert a.psnr_original[a.best].mean() == a.psnr_original.mean(1).max()
    with pytest.raises(logic.InputError, match="between 1 and 16"):
        logic.predict(model, frames, cond, edited, 17, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(responsive_runs):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "demo_app.py", "--port", str(port), "--host", "127.0.0.1",
                             "--runs", str(responsive_runs)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the app exited: {proc.stdout.read()}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not start listening within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_live_app_through_gradio_client(server, bundled, responsive_runs):
    from gradio_client import Client

    _, _, _, cond = bundled
    client = Client(server, verbose=False)
    source = "bundled test sequences"
    (model,) = [label for label in logic.find_models([responsive_runs]) if "responsive" in label]
    rows = logic.table_rows(cond, N_PAST, N_FUTURE)
    table = {"headers": logic.HEADERS, "data": rows}
    edited_rows = [list(r) for r in rows]
    for r in edited_rows:
        r[2], r[3] = -r[2], -r[3]
    edited = {"headers": logic.HEADERS, "data": edited_rows}

    def frames(result):
        from PIL import Image

        img = Image.open(result[0])  # truth | original | edited
        return np.stack([np.asarray(img.seek(i) or img.convert("RGB")) for i in range(img.n_frames)])

    one = client.predict(source, 0, model, edited, 4, 7, api_name="/predict")
    two = client.predict(source, 0, model, edited, 4, 7, api_name="/predict")
    same = client.predict(source, 0, model, table, 4, 7, api_name="/predict")
    a, b, c = frames(one), frames(two), frames(same)
    assert np.array_equal(a, b)  # same seed, same frames
    tile, gap = 64 * 4, 2 * 4  # the GIF is upscaled 4x, with 2-pixel gaps between its three videos

    def column(video, k):
        return video[:, :, k * (tile + gap) : k * (tile + gap) + tile].astype(int)

    assert a.shape[2] == 3 * tile + 2 * gap
    assert np.abs(column(a, 1) - column(a, 2)).mean() > 0.1  # edited actions change the future
    assert np.array_equal(column(c, 1), column(c, 2))  # unedited: identical columns
    assert "ms" in one[-1]

    from gradio_client.exceptions import AppError

    bad = {"headers": logic.HEADERS, "data": [list(r) for r in rows]}
    bad["data"][2][4] = "banana"
    with pytest.raises(AppError, match=r"row 3, column lift: 'banana' is not a number"):
        client.predict(source, 0, model, bad, 4, 7, api_name="/predict")
    assert client.predict(source, 1, model, table, 2, 1, api_name="/predict")  # still serving


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_browser_pick_edit_predict(server, tmp_path):
    if _chromium() is None:
        if os.environ.get("CVAE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (CVAE_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    shots = ROOT / "test-artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                           "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server)
        page.wait_for_selector('#table [data-testid="cell-0-2"]', timeout=60_000)
        page.wait_for_selector("#ctx1 img", timeout=60_000)
        page.locator("#gallery .thumbnail-item").nth(3).click()  # pick sequence 3 by its thumbnail
        page.wait_for_function("document.querySelector('#index input[type=number]').value == '3'", timeout=30_000)
        page.locator('#table [data-testid="cell-0-2"]').dblclick()  # row 1, column dx
        page.keyboard.press("Control+A")
        page.keyboard.type("-0.0123")
        page.keyboard.press("Enter")
        page.wait_for_function("""document.querySelector('#table [data-testid="cell-0-2"]').innerText.includes('-0.0123')""",
                               timeout=10_000)
        page.locator("#predict").click()
        page.wait_for_selector("#compare img[src*='.gif']", timeout=60_000)
        page.wait_for_selector("#step_plot .js-plotly-plot", timeout=60_000)
        summary = page.locator("#summary").inner_text()
        assert "ms" in summary and "actions unedited" not in summary, summary  # the edited cell reached the model
        page.screenshot(path=str(shots / "app.png"), full_page=True)
        browser.close()
    assert (shots / "app.png").stat().st_size > 10_000
