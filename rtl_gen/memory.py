"""Weight memory: one word per cycle, synchronous read (latency 1), one write port for run-time
loading.

Two back ends with the same ports:
* ``image_file=None``: ``amaranth.lib.memory.Memory`` initialised from the image (simulation in
  Amaranth, small designs);
* ``image_file="weights.hex"``: an instance of the small Verilog module ``WMEM_VERILOG`` that reads
  the file with ``$readmemh`` (relative to the simulator's / synthesizer's working directory), so
  a multi-Mbit matrix never becomes inline Verilog (see TOOLCHAIN.md).
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwrnn.config import ConfigError
from hwrnn.resources import Built, Mem

#: the weight memory's module name: the output holds this module beside the core (so --name may not be it)
WMEM_MODULE = "hwrnn_wmem"

WMEM_VERILOG = """\
// Weight memory of the hwrnn LSTM core: synchronous read, one write port, $readmemh init.
module """ + WMEM_MODULE + """ #(
    parameter WIDTH = 8,
    parameter DEPTH = 2,
    parameter AW = 1,
    parameter INIT_FILE = ""
) (
    input  wire             clk,
    input  wire [AW-1:0]    raddr,
    output reg  [WIDTH-1:0] rdata,
    input  wire             we,
    input  wire [AW-1:0]    waddr,
    input  wire [WIDTH-1:0] wdata
);
    (* no_rw_check *)
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    initial begin
        if (INIT_FILE != "") $readmemh(INIT_FILE, mem);
    end
    always @(posedge clk) begin
        if (we) mem[waddr] <= wdata;
        rdata <= mem[raddr];
    end
endmodule
"""


def hex_image(words, width: int) -> str:
    """$readmemh text: one word per line, fixed number of hex digits."""
    digits = (width + 3) // 4
    return "".join(f"{w:0{digits}x}\n" for w in words)


#: yosys memory attribute (memory_libmap: any of ram_block/rom_block/ram_style/... = 1) that keeps a
#: memory in block or LUT RAM, never logic. For deep memories whose write port is tied off (a
#: stack's cores: weights fixed at build): yosys turns their constant contents into logic ROM (a W2A2
#: H128 bidirectional layer, PE 8 SIMD 54, 192-word weight memories, on xc7: 36,227 LUTs; marked:
#: 17,454), where the cost model prices RAM.
KEEP_AS_MEMORY = {"ram_block": 1}
#: yosys memory attribute: a read and a write of the same address in one cycle need not return the old
#: word. The core never uses a word read in the cycle it is written (weights and biases are loaded
#: while it is idle, the first read follows the last write by a cycle), so yosys may map the memory
#: to block RAM without its read-old-data emulation (on ECP5 two flip-flops and a multiplexer per
#: data bit between the block RAM and the register after it: W4A2 H=32 PE 8 SIMD 16 6058 -> 5541
#: LUT4, 5410 -> 4378 FF; that path was critical on W8A8 H=16 serial, 162 -> 181 MHz)
NO_RW_CHECK = {"no_rw_check": 1}
#: fixed memories of more words than this are marked KEEP_AS_MEMORY; shallower ones keep yosys's own
#: choice (a 24-word weight memory marked went to block RAM on ECP5: 96 DP16KD instead of 46 for a
#: W2A2 H32 bidirectional layer, where logic ROM or LUT RAM is what the model prices)
KEEP_AS_MEMORY_MIN_WORDS = 65


def registered_read(m: Module, mem: Memory, addr, name: str) -> Signal:
    """The word at ``addr`` of the previous cycle (latency 1, like a synchronous read port): an
    asynchronous read port of ``mem`` and a register without reset, which yosys (memory_dff) merges
    into a synchronous read port. A read port made synchronous by Amaranth comes with a defined
    read-during-write result (the old word), which yosys emulates around an ECP5 block RAM even
    when the memory carries NO_RW_CHECK; a merged register honours it."""
    rd = mem.read_port(domain="comb")
    data = Signal(mem.shape, reset_less=True, name=name)
    m.d.comb += rd.addr.eq(addr)
    m.d.sync += data.eq(rd.data)
    return data


def memory_attrs(fixed: bool, depth: int) -> dict:
    """The yosys attributes of a core memory of ``depth`` words: NO_RW_CHECK, and KEEP_AS_MEMORY
    for a deep fixed one (fixed_memory_attrs)."""
    return {**NO_RW_CHECK, **(fixed_memory_attrs(fixed, depth) or {})}


def fixed_memory_attrs(fixed: bool, depth: int) -> dict | None:
    """The attributes of a memory of ``depth`` words (KEEP_AS_MEMORY for a deep fixed one)."""
    return KEEP_AS_MEMORY if fixed and depth >= KEEP_AS_MEMORY_MIN_WORDS else None


class WeightMemory(wiring.Component):
    """WIDTH x DEPTH memory; ``rdata`` is the word at ``raddr`` of the previous cycle. ``fixed``: the
    write port will be tied off (contents fixed at build; see fixed_memory_attrs)."""

    def __init__(self, width: int, depth: int, init, image_file: str | None = None, fixed: bool = False):
        if width < 1 or depth < 1:
            raise ConfigError(f"weight memory must have width and depth >= 1, got {width} x {depth}")
        init = list(init)
        if len(init) != depth:
            raise ConfigError(f"weight image has {len(init)} words, memory depth is {depth}")
        self.width, self.depth, self.init, self.image_file = width, depth, init, image_file
        self.fixed = bool(fixed)
        self.addr_width = max(1, (depth - 1).bit_length())
        super().__init__({
            "raddr": In(self.addr_width),
            "rdata": Out(width),
            "we": In(1),
            "waddr": In(self.addr_width),
            "wdata": In(width),
        })

    @classmethod
    def built(cls, width: int, depth: int) -> Built:
        """One width x depth memory with a write port (its read register belongs to the memory)."""
        return Built(mems=(Mem("wmem", width, depth, True, rw_check=False),), stages=1)

    def elaborate(self, platform):
        m = Module()
        if self.image_file is None:
            m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=self.init,
                                            attrs=memory_attrs(self.fixed, self.depth))
            wr = mem.write_port()
            m.d.comb += [self.rdata.eq(registered_read(m, mem, self.raddr, "rdata_r")),
                         wr.addr.eq(self.waddr), wr.data.eq(self.wdata), wr.en.eq(self.we)]
        else:
            m.submodules.mem = Instance(
                WMEM_MODULE,
                p_WIDTH=self.width, p_DEPTH=self.depth, p_AW=self.addr_width, p_INIT_FILE=self.image_file,
                i_clk=ClockSignal(), i_raddr=self.raddr, o_rdata=self.rdata,
                i_we=self.we, i_waddr=self.waddr, i_wdata=self.wdata)
        return m
