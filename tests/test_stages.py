"""pbrl.stages: what the staged benchmark scripts share."""

from __future__ import annotations

import json

from pbrl.stages import read_curve, save_stage


def test_read_curve_interpolates_inside_and_refuses_outside():
    curve = [(2.0, 0.5), (0.0, 0.1), (1.0, 0.3)]  # unsorted on purpose
    assert read_curve(curve, 0.5) == 0.2
    assert read_curve(curve, 1.5) == 0.4
    assert read_curve(curve, 2.0) == 0.5
    assert read_curve(curve, 2.5) is None and read_curve(curve, -0.1) is None


def test_save_stage_keeps_the_other_stages(tmp_path):
    """Two scripts writing different stages into one folder: each save rereads the file, so neither is lost."""
    path = tmp_path / "results.json"
    save_stage(path, "a", {"x": 1})
    path.write_text(json.dumps({**json.loads(path.read_text()), "b": [2]}))  # another process's stage
    save_stage(path, "c", 3)
    assert json.loads(path.read_text()) == {"a": {"x": 1}, "b": [2], "c": 3}
    assert not path.with_suffix(".tmp").exists()
