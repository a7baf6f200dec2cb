"""benchmarks/weight_codes.py's reading is computed from the run it describes."""
from benchmarks import weight_codes as wc


def test_reading_follows_the_counts():
    res = {"codes": {"balanced W2": {"counts": {"lut": 1000}, "cycles_per_step": 85},
                     "ternary": {"counts": {"lut": 900}, "cycles_per_step": 85},
                     "pow2_ternary": {"counts": {"lut": 900}},
                     "balanced W4": {"counts": {"lut": 2000}, "fmax_mhz": 170.0},
                     "exponential W4": {"counts": {"lut": 2500}, "fmax_mhz": 160.0}}}
    text = wc.reading(res)
    assert "10.0 % fewer LUTs than the balanced W2 core (900 vs 1000)" in text
    assert "same hardware" in text and "1.25x the LUTs of the balanced W4 core (2500 vs 2000) at 160.0 MHz" in text
    res["codes"]["pow2_ternary"]["counts"] = {"lut": 901}
    del res["codes"]["exponential W4"]
    text = wc.reading(res)
    assert "same hardware" not in text and "exponential" not in text.split(".")[0]
    assert wc.reading({"codes": {}}) == ""
