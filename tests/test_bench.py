"""The benchmark scripts' user-facing edges."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_report_names_a_missing_eval_json(tmp_path):
    missing = tmp_path / "run" / "last" / "eval" / "eval.json"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--report", str(missing)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and f"no eval.json at {missing}" in out.stderr and "Traceback" not in out.stderr
