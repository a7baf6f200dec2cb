"""The FPGA families and devices hwrnn knows: the one table of what parts exist and what they hold.

Block RAM bits are the data bits of the device's block RAM primitives, counted the way the
family's primitive is sized in hwrnn.fpga.BRAM_BITS (ECP5 DP16KD = 18 kbit, 9-bit bytes included;
iCE40 SB_RAM40_4K = 4 kbit; 7-series RAMB36 = 36 kbit), from the vendors' data sheets. The iCE40
UP5K also has 4 x 256 kbit SPRAM, listed separately. LUTs are LUT4s (ECP5, iCE40) or LUT6s
(7-series); FFs are fabric flip-flops; DSPs are MULT18X18D / SB_MAC16 / DSP48E1 blocks.
"""
from __future__ import annotations

from typing import NamedTuple

#: FPGA families, in report order: yosys synth_ecp5, synth_ice40 -dsp, synth_xilinx (7-series)
FAMILIES = ("ecp5", "ice40", "xilinx")


class Device(NamedTuple):
    """One device (a tuple: code that unpacks the 6 fields positionally keeps working)."""

    family: str
    bram_bits: int   # block RAM data bits
    spram_bits: int  # extra single-port RAM bits (iCE40 UP5K SPRAM)
    luts: int
    ffs: int
    dsps: int


DEVICES = {
    "ice40hx8k": Device("ice40", 32 * 4096, 0, 7680, 7680, 0),
    "ice40up5k": Device("ice40", 30 * 4096, 4 * 262144, 5280, 5280, 8),
    "lfe5u-25f": Device("ecp5", 56 * 18432, 0, 24288, 24288, 28),
    "lfe5u-45f": Device("ecp5", 108 * 18432, 0, 43848, 43848, 72),
    "lfe5u-85f": Device("ecp5", 208 * 18432, 0, 83640, 83640, 156),
    "xc7a35t": Device("xilinx", 50 * 36864, 0, 20800, 41600, 90),
    "xc7z020": Device("xilinx", 140 * 36864, 0, 53200, 106400, 220),
    "xc7a100t": Device("xilinx", 135 * 36864, 0, 63400, 126800, 240),
}


def device(name: str) -> Device:
    """The device called `name`; ValueError (one line) for an unknown one."""
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown FPGA device {name!r}: choose one of {', '.join(DEVICES)}") from None


def check_family(family: str) -> str:
    """`family` if it is one of FAMILIES; ValueError (one line) otherwise."""
    if family not in FAMILIES:
        raise ValueError(f"unknown FPGA family {family!r}: choose one of {', '.join(FAMILIES)}")
    return family


def devices_of(family: str) -> dict[str, Device]:
    """The family's devices, smallest (fewest LUTs) first."""
    check_family(family)
    return dict(sorted(((n, d) for n, d in DEVICES.items() if d.family == family), key=lambda nd: nd[1].luts))


def weight_fit(weight_bits: int) -> dict:
    """For each known device: whether `weight_bits` fit in its block RAM (and in BRAM + SPRAM)."""
    out = {}
    for name, d in DEVICES.items():
        out[name] = {
            "family": d.family,
            "block_ram_bits": d.bram_bits,
            "fits_block_ram": weight_bits <= d.bram_bits,
            "fits_with_spram": weight_bits <= d.bram_bits + d.spram_bits,
            "use_percent": round(100.0 * weight_bits / d.bram_bits, 1),
        }
    return out
