"""The torch thread count of facegs processes: 1 unless the user says otherwise (--threads, $FACEGS_THREADS).

Why 1: on a machine shared with other jobs, OpenMP threads competing for the cores spin and a
2-thread process was measured up to 50x slower than a 1-thread one (docs/benchmarks.md); facegs
scales out with processes (Ray actors set their own count).
"""

from __future__ import annotations

import pytest
import torch

from facegs.cli.app import default_threads, main


def test_default_is_one_thread_then_env_then_flag(monkeypatch):
    monkeypatch.delenv("FACEGS_THREADS", raising=False)
    assert default_threads() == 1 and default_threads(None) == 1
    monkeypatch.setenv("FACEGS_THREADS", "3")
    assert default_threads() == 3
    assert default_threads(2) == 2  # --threads wins over the environment
    for bad in ("zero", "0", "-2"):
        monkeypatch.setenv("FACEGS_THREADS", bad)
        with pytest.raises(SystemExit, match="FACEGS_THREADS"):
            default_threads()


def test_cli_sets_torch_threads(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEGS_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        main(["validate", str(tmp_path / "missing")])  # any command; it fails fast on the missing folder
        assert torch.get_num_threads() == 1
        main(["--threads", "2", "validate", str(tmp_path / "missing")])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
