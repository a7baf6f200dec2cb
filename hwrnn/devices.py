"""Known devices and their on-chip memory, for "do the weights fit" answers.

Block RAM bits are the data bits of the device's block RAM primitives (parity bits excluded
where they are separate), from the vendors' data sheets:
ECP5 EBR = 18 kbit; iCE40 EBR = 4 kbit (UP5K also has 4 x 256 kbit SPRAM, listed separately);
7-series BRAM36 = 36 kbit.
"""
from __future__ import annotations

DEVICES = {
    # name: (family, block RAM bits, extra single-port RAM bits, LUTs, FFs, DSPs)
    "ice40hx8k": ("ice40", 32 * 4096, 0, 7680, 7680, 0),
    "ice40up5k": ("ice40", 30 * 4096, 4 * 262144, 5280, 5280, 8),
    "lfe5u-25f": ("ecp5", 56 * 18432, 0, 24288, 24288, 28),
    "lfe5u-45f": ("ecp5", 108 * 18432, 0, 43848, 43848, 72),
    "lfe5u-85f": ("ecp5", 208 * 18432, 0, 83640, 83640, 156),
    "xc7a35t": ("xilinx", 50 * 36864, 0, 20800, 41600, 90),
    "xc7z020": ("xilinx", 140 * 36864, 0, 53200, 106400, 220),
    "xc7a100t": ("xilinx", 135 * 36864, 0, 63400, 126800, 240),
}


def weight_fit(weight_bits: int) -> dict:
    """For each known device: whether `weight_bits` fit in its block RAM (and in BRAM + SPRAM)."""
    out = {}
    for name, (family, bram, spram, *_rest) in DEVICES.items():
        out[name] = {
            "family": family,
            "block_ram_bits": bram,
            "fits_block_ram": weight_bits <= bram,
            "fits_with_spram": weight_bits <= bram + spram,
            "use_percent": round(100.0 * weight_bits / bram, 1),
        }
    return out
