"""The stack's analytic cost (rtl_gen.stack_cost): the sum of its layer cores (rtl_gen.cost.estimate
with each direction's own constants) plus a bidirectional layer's buffers, sized from max_len."""
import pytest

from hwrnn import Folding, LayerConfig
from hwrnn.resources import RESOURCES
from hwrnn.stack import Stack
from rtl_gen.cost import estimate
from rtl_gen.stack import BidirLayer
from rtl_gen.stack_cost import buffer_estimate, buffers_built, layer_consts, stack_estimate


def _core(q, fold, family):
    return estimate(q.cfg, fold, family, consts=layer_consts(q, fold))["total"]


@pytest.mark.parametrize("family", ["ecp5", "ice40", "xilinx"])
def test_stack_cost_is_its_cores_plus_the_buffers(family):
    c0 = LayerConfig(wbits=2, abits=2, hidden=16, input=8)
    c1 = LayerConfig(wbits=3, abits=2, hidden=8, input=32, cell_type="gru")
    folds = [Folding(pe=8, simd=8), Folding(pe=4, simd=8)]
    uni = Stack.random([c0, LayerConfig(wbits=3, abits=2, hidden=8, input=16, cell_type="gru")], seed=1)
    est = stack_estimate(uni, folds, family)
    for r in RESOURCES:
        assert est["total"][r] == pytest.approx(sum(_core(layer.directions[0], f, family)[r]
                                                    for layer, f in zip(uni.layers, folds)), abs=1)
    bi = Stack.random([c0, c1], bidirectional=[True, False], seed=1)
    est = stack_estimate(bi, folds, family, max_len=100)
    fw, bw = bi.layers[0].directions
    buf = buffer_estimate(c0, 100, family)
    for r in RESOURCES:
        assert est["layers"][0]["total"][r] == pytest.approx(
            _core(fw, folds[0], family)[r] + _core(bw, folds[0], family)[r] + buf[r], abs=1)
        assert est["layers"][1]["total"][r] == pytest.approx(
            _core(bi.layers[1].directions[0], folds[1], family)[r] + (2 if r == "ff" else 0), abs=1)
    with pytest.raises(ValueError, match="needs max_len"):
        stack_estimate(bi, folds, family)


def test_buffers_are_sized_from_the_configuration_and_max_len():
    cfg = LayerConfig(wbits=2, abits=3, hidden=12, input=5)
    bufs = BidirLayer.buffers(cfg, 300)
    assert bufs == {"xbuf": (15, 300, 2), "fbuf": (36, 300, 1), "bbuf": (36, 300, 1)}
    mems = {m.name: m for m in buffers_built(cfg, 300).subs[0][2].mems}
    assert sum(m.width * m.depth * m.copies for m in mems.values()) == 300 * (2 * 15 + 2 * 36)
    small, big = (buffer_estimate(cfg, n, "ecp5") for n in (16, 4096))
    assert big["bram"] > small["bram"] or big["lutram"] > small["lutram"]
