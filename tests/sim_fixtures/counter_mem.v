// Tiny hand-written fixture for tests/test_sim_runner.py.
// * out_*: a valid/ready stream carrying 0, 1, ..., LIMIT-1 (out_last on the final word),
//   advancing only on out_valid && out_ready.
// * rd_addr/rd_data: combinational read of an 8 x 16-bit memory initialised from "mem.hex",
//   a path relative to the simulator's working directory.
`default_nettype none
module counter_mem #(
    parameter WIDTH = 8,
    parameter LIMIT = 10
) (
    input  wire             clk,
    input  wire             rst,
    output reg  [WIDTH-1:0] out_data,
    output wire             out_valid,
    output wire             out_last,
    input  wire             out_ready,
    input  wire [2:0]       rd_addr,
    output wire [15:0]      rd_data
);
    reg [15:0] mem [0:7];
    initial $readmemh("mem.hex", mem);
    assign rd_data = mem[rd_addr];

    // Deliberate lint warning (Verilator WIDTHTRUNC), as Amaranth's Verilog has: the runner
    // must build with -Wno-fatal.
    wire [3:0] low_nibble = out_data;

    reg running;
    assign out_valid = running;
    assign out_last  = running && (out_data == LIMIT - 1);

    always @(posedge clk) begin
        if (rst) begin
            out_data <= 0;
            running  <= 1'b1;
        end else if (out_valid && out_ready) begin
            if (out_last)
                running <= 1'b0;
            else
                out_data <= out_data + 1'b1;
        end
    end
endmodule
`default_nettype wire
