"""FPGA primitives and the fit check: how yosys maps memories and multipliers on each family, which
cells its netlists hold, and whether resource counts fit a device of hwrnn.devices.

The one fit check (``fit_device`` / ``device_fit``) answers for every caller: rtl_gen's analytic
report and --estimate, the synthesis flow's choice of the place-and-route device, and the boards'
check before a build. Counts are dicts with "lut", "ff", "carry", "bram", "dsp", "lutram":
"bram" in the family's block RAM primitives (BRAM_BITS; Xilinx: 36 kbit tiles, a RAMB18 is 0.5),
"dsp" in DSP blocks, "lutram" in ECP5 DPR16X4 cells or Xilinx LUTs used as RAM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .devices import DEVICES, FAMILIES, check_family, device

# ---- block RAM and LUT primitives ------------------------------------------------------------------

#: block RAM primitive size in bits, per family (hwrnn.devices counts data bits the same way)
BRAM_BITS = {"ecp5": 18432, "ice40": 4096, "xilinx": 36864}
BRAM_UNIT = {"ecp5": "DP16KD (18 kbit)", "ice40": "SB_RAM40_4K (4 kbit)", "xilinx": "RAMB36 tile (36 kbit)"}
LUT_INPUTS = {"ecp5": 4, "ice40": 4, "xilinx": 6}
#: LUTs of a wide multiplexer per data input, relative to ECP5 (LUT4 + PFUMX: about 1/2 per input;
#: iCE40 LUT4 alone: about 2/3; 7-series LUT6 + MUXF7/F8: about 1/4)
MUX_COST = {"ecp5": 1.0, "ice40": 4 / 3, "xilinx": 0.5}

assert set(BRAM_BITS) == set(BRAM_UNIT) == set(LUT_INPUTS) == set(MUX_COST) == set(FAMILIES)


@dataclass(frozen=True)
class MemMap:
    kind: str        # "bram", "lutram" or "logic"
    bram: float      # block RAM primitives (Xilinx: 36 kbit tiles)
    lutram: int      # LUT RAM primitives (ECP5 DPR16X4) or LUTs used as RAM (Xilinx)
    emulation: bool  # read-old-data registers around a block RAM with a write port and a rw check


def _bram_ecp5(width, depth, has_write):
    """DP16KD / PDPW16KD (PDPW16KD gives 512 x 36 with one read and one write port)."""
    cfgs = [(512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)]
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in cfgs)


def _bram_ice40(width, depth, has_write):
    cfgs = [(256, 16), (512, 8), (1024, 4), (2048, 2)]
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in cfgs)


def _bram_xilinx(width, depth, has_write):
    """RAMB18 = 0.5 tile (1k x 18, 512 x 36 simple dual port), RAMB36 = 1 tile (1k x 36 SDP ...)."""
    best = None
    for d, w, tiles in [(512, 36, 0.5), (1024, 18, 0.5), (2048, 9, 0.5), (4096, 4, 0.5), (8192, 2, 0.5),
                        (16384, 1, 0.5), (512, 72, 1), (1024, 36, 1), (2048, 18, 1), (4096, 9, 1), (8192, 4, 1),
                        (16384, 2, 1), (32768, 1, 1)]:
        n = math.ceil(width / w) * math.ceil(depth / d) * tiles
        best = n if best is None else min(best, n)
    return best


#: memory_libmap's cost of the read mux of ECP5 LUT RAM deeper than one DPR16X4 (16 words), per
#: data bit and bank beyond the first: bracketed by yosys 0.70 mapping a written memory with a
#: synchronous read (rtl_gen.memory.WeightMemory) to LUT RAM at 256 x 40 and 128 x 48 but to
#: DP16KD at 260 x 48 and 512 x 48 (0.469 < cost <= 0.5, the block RAM costing 128 a primitive)
LUTRAM_MUX_COST = 0.49


def lutram_read_mux_bits(width: int, depth: int, bank: int = 16) -> int:
    """Data bits times extra banks of the read mux of a LUT RAM built from ``bank``-word primitives."""
    return width * (math.ceil(depth / bank) - 1)


def map_memory(family: str, width: int, depth: int, has_write: bool, rw_check: bool = True) -> MemMap:
    """How yosys' memory_libmap maps a width x depth memory with one synchronous read port (and a
    write port): the cheapest of block RAM, LUT RAM and logic by its cost rule (cost of a primitive
    times the number of primitives), with the primitives and costs of yosys' library files.
    ``rw_check``: a read during a write of the same word must return the old word, which ECP5 and
    iCE40 block RAM do not guarantee across ports, so yosys emulates it (``emulation``); False for
    a memory marked no_rw_check (rtl_gen.memory.NO_RW_CHECK)."""
    bits = width * depth
    emulate = has_write and rw_check
    if family == "ecp5":
        nb = _bram_ecp5(width, depth, has_write)
        options = [(128 * nb, MemMap("bram", nb, 0, emulate))]
        if has_write:  # DPR16X4 is not used for ROMs (prune_rom)
            nl = math.ceil(width / 4) * math.ceil(depth / 16)
            # plus the read mux between banks of 16 words, LUTRAM_MUX_COST per bit and extra bank
            options.append((4 * nl + LUTRAM_MUX_COST * lutram_read_mux_bits(width, depth), MemMap("lutram", 0, nl, False)))
        else:
            options.append((bits / 16.0, MemMap("logic", 0, 0, False)))
    elif family == "ice40":
        nb = _bram_ice40(width, depth, has_write)
        options = [(64 * nb, MemMap("bram", nb, 0, emulate))]
        if not has_write:
            options.append((bits / 16.0, MemMap("logic", 0, 0, False)))
    elif family == "xilinx":
        nb = _bram_xilinx(width, depth, has_write)
        # 7-series block RAM keeps old data on a read during a write through the other port: no emulation
        options = [(129 * 2 * nb, MemMap("bram", nb, 0, False))]
        if has_write:
            # simple dual port LUT RAM: RAM32M (32 x 6 per 4 LUTs) / RAM64M (64 x 3 per 4 LUTs)
            per = [(32, 6), (64, 3), (128, 1), (256, 1)]
            luts = min(math.ceil(width / w) * math.ceil(depth / d) * (4 if d <= 64 else d // 64 * 2)
                       for d, w in per)
            options.append((2 * luts, MemMap("lutram", 0, luts, False)))
        else:
            options.append((bits / 64.0, MemMap("logic", 0, 0, False)))
    else:
        check_family(family)
    return min(options, key=lambda o: o[0])[1]


# ---- DSP blocks ------------------------------------------------------------------------------------

DSP_TILE = {"ecp5": (18, 18), "ice40": (16, 16), "xilinx": (25, 18)}
#: products narrower than this stay in logic (mul2dsp's DSP_Y_MINWIDTH; measured for ECP5 and Xilinx)
DSP_MIN_Y = {"ecp5": 0, "ice40": 11, "xilinx": 9}


def _chunks(width: int, tile: int) -> list[int]:
    out = [tile] * (width // tile)
    if width % tile:
        out.append(width % tile)
    return out


def dsp_tiles(family: str, a_bits: int, b_bits: int) -> int:
    """DSP blocks yosys' mul2dsp uses for an a_bits x b_bits product: the wider operand is cut into
    tiles of the DSP's wider port, the other into tiles of its narrower port; a tile pair maps to a
    DSP when both parts are at least 2 bits and the partial product is at least DSP_MIN_Y bits."""
    ta, tb = DSP_TILE[family]
    a, b = max(a_bits, b_bits), min(a_bits, b_bits)
    return sum(1 for ca in _chunks(a, ta) for cb in _chunks(b, tb)
               if ca >= 2 and cb >= 2 and ca + cb >= DSP_MIN_Y[family])


def mult18_fits(a_bits: int, a_signed: bool, b_bits: int, b_signed: bool) -> bool:
    """Whether an a x b product fits one ECP5 MULT18X18D (18 x 18; with mixed signedness the
    unsigned operand needs one more bit)."""
    w = DSP_TILE["ecp5"][0]
    if a_signed != b_signed:
        a_bits, b_bits = a_bits + (not a_signed), b_bits + (not b_signed)
    return a_bits <= w and b_bits <= w


# ---- netlist cells ---------------------------------------------------------------------------------

#: resource class of each primitive cell type a family's synthesis produces (cells per primitive;
#: Xilinx block RAM in 36 kbit tiles, LUT RAM in LUTs per primitive, as Vivado counts them in "LUT")
CELL_CLASSES = {
    "ecp5": {
        "lut": {"LUT4": 1},
        "carry": {"CCU2C": 1},
        "ff": {"TRELLIS_FF": 1},
        "bram": {"DP16KD": 1, "PDPW16KD": 1},
        "dsp": {"MULT18X18D": 1, "ALU54B": 1},
        "lutram": {"TRELLIS_DPR16X4": 1},
        "mux": {"PFUMX": 1, "L6MUX21": 1},
    },
    "ice40": {
        "lut": {"SB_LUT4": 1},
        "carry": {"SB_CARRY": 1},
        "ff": {t: 1 for t in ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR", "SB_DFFER",
                              "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE", "SB_DFFNSR",
                              "SB_DFFNR", "SB_DFFNS", "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES", "SB_DFFNSS",
                              "SB_DFFNESS")},
        "bram": {"SB_RAM40_4K": 1, "SB_RAM40_4KNR": 1, "SB_RAM40_4KNW": 1, "SB_RAM40_4KNRNW": 1},
        "spram": {"SB_SPRAM256KA": 1},
        "dsp": {"SB_MAC16": 1},
    },
    "xilinx": {
        "lut": {f"LUT{i}": 1 for i in range(1, 7)},
        "carry": {"CARRY4": 1, "CARRY8": 1},
        "ff": {"FDRE": 1, "FDSE": 1, "FDCE": 1, "FDPE": 1, "LDCE": 1, "LDPE": 1},
        "bram": {"RAMB36E1": 1, "RAMB18E1": 0.5},  # in 36 kbit tiles
        "dsp": {"DSP48E1": 1},
        "lutram": {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1S": 4,
                   "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM32M16": 8, "RAM64M8": 8,
                   "SRL16E": 1, "SRLC32E": 1},
        "mux": {"MUXF7": 1, "MUXF8": 1},
    },
}
#: cell types that are no resource of the core (IO buffers, clock buffers, constants)
IGNORED_CELLS = {"$scopeinfo", "IBUF", "OBUF", "BUFG", "IOBUF", "OBUFT", "INV", "VCC", "GND", "SB_IO",
                 "SB_GB", "TRELLIS_IO"}


# ---- the fit check ---------------------------------------------------------------------------------

def logic_cells(family: str, c: dict) -> float:
    """LUT-sized cells of a count (ECP5: a CCU2C is 2 LUT4 and a DPR16X4 about 6; iCE40: a logic
    cell holds a LUT4 and a carry; 7-series: LUTs plus LUTs used as RAM)."""
    if family == "ecp5":
        return c["lut"] + 2 * c["carry"] + 6 * c["lutram"]
    if family == "ice40":
        return max(c["lut"], c["carry"])
    return c["lut"] + c["lutram"]


def bram_blocks(name: str) -> int:
    """Block RAM primitives (BRAM_BITS units) of a device."""
    d = device(name)
    return d.bram_bits // BRAM_BITS[d.family]


#: share of a device's logic cells and FFs a design may use and still be expected to place and route
PLACEMENT_MARGIN = 0.95

#: the resources the fit check compares, with their names in messages
FIT_RESOURCES = {"logic": "logic cells", "ff": "FF", "bram": "block RAM", "dsp": "DSP"}


@dataclass(frozen=True)
class Fit:
    """Whether counts fit one device: needed and available per FIT_RESOURCES key."""

    device: str
    family: str
    needed: dict
    available: dict   # after the margin (logic and FF only)
    over: tuple       # FIT_RESOURCES keys exceeded, in that order

    @property
    def fits(self) -> bool:
        return not self.over

    @property
    def use_percent(self) -> dict:
        out = {}
        for k, need in self.needed.items():
            cap = self.available[k]
            v = need / cap if cap else (0.0 if need == 0 else float("inf"))
            out[k] = round(100 * v, 1) if math.isfinite(v) else None
        return out

    def why(self) -> str:
        """What is exceeded, one line: "logic cells 21038 > 20800, DSP 9 > 8" ('' when it fits)."""
        unit = {"bram": f" {BRAM_UNIT[self.family]}"}
        return ", ".join(f"{FIT_RESOURCES[k]} {self.needed[k]:g} > {self.available[k]:g}{unit.get(k, '')}"
                         for k in self.over)


def fit_device(name: str, counts: dict, margin: float = 1.0) -> Fit:
    """The fit of counts (of the device's family) on device `name`. ``margin`` < 1 leaves room for
    placement: logic cells and FFs must stay within margin x the device's; block RAM and DSP blocks
    are counted against all of them."""
    d = device(name)
    needed = {"logic": logic_cells(d.family, counts), "ff": counts["ff"], "bram": counts["bram"],
              "dsp": counts["dsp"]}
    available = {"logic": d.luts * margin, "ff": d.ffs * margin, "bram": bram_blocks(name), "dsp": d.dsps}
    over = tuple(k for k in FIT_RESOURCES if needed[k] > available[k])
    return Fit(name, d.family, needed, available, over)


def device_fit(family: str, counts: dict, margin: float = 1.0) -> dict:
    """{device: {"fits": bool, "over": [resources exceeded], "use_percent": {resource: percent}}}
    for the family's devices in hwrnn.devices (table order)."""
    check_family(family)
    out = {}
    for name, d in DEVICES.items():
        if d.family != family:
            continue
        f = fit_device(name, counts, margin)
        out[name] = {"fits": f.fits, "over": list(f.over), "use_percent": f.use_percent}
    return out
