"""benchmarks/cell_ablation.py --units-only: after an RTL change the cell units are measured again
for the recorded model's configuration while the recorded perplexities stay as they were."""
import json

import pytest

from benchmarks import cell_ablation as ca


def test_units_only_remeasures_units_and_keeps_perplexities(tmp_path, monkeypatch):
    rec = {"command": "python benchmarks/cell_ablation.py --checkpoint x.pt", "checkpoint": "x.pt",
           "model": "W4A4 H=300", "trained_epochs": 7, "split": "test", "note": "", "training_model_ppw": 170.0,
           "date": "2026-12-01 06:20 UTC",
           "formats": {c: {"integer_ppw": 169.5 + i, "eval_s": 1.0, "cell_bits": 16,
                           "unit_ecp5": {"LUT4": 1, "CCU2C": 1, "MULT18X18D": 2, "FF": 1, "cells": 4, "latency_cycles": 12}}
                       for i, c in enumerate(("fixed:3.10", "fp16"))}}
    out = str(tmp_path / "cell_ablation")
    with open(out + ".json", "w") as fh:
        json.dump(rec, fh)
    seen = []

    def fake_unit(cfg):
        seen.append((cfg.wbits, cfg.abits, cfg.hidden, cfg.cell))
        return {"LUT4": 100 + len(seen), "CCU2C": 7, "MULT18X18D": 2, "FF": 50, "cells": 160, "latency_cycles": 12}

    monkeypatch.setattr(ca, "cell_unit_resources", fake_unit)
    res = ca.units_only(out)
    text = ca.write_record(res, out)
    assert [s[:3] for s in seen] == [(4, 4, 300)] * 2 and [s[3] for s in seen] == ["fixed:3.10", "fp16"]
    saved = json.load(open(out + ".json"))
    assert [saved["formats"][c]["integer_ppw"] for c in ("fixed:3.10", "fp16")] == [169.5, 170.5]
    assert [saved["formats"][c]["unit_ecp5"]["LUT4"] for c in ("fixed:3.10", "fp16")] == [101, 102]
    assert saved["units_command"].endswith("--units-only") and saved["date"] == rec["date"]
    assert "re-measured for the current RTL" in text and "| fp16 | 16 | 170.50 | 102 |" in text


def test_units_only_refuses_an_unreadable_model(tmp_path):
    out = str(tmp_path / "c")
    with open(out + ".json", "w") as fh:
        json.dump({"model": "something", "formats": {}}, fh)
    with pytest.raises(SystemExit, match="cannot read the model"):
        ca.units_only(out)
