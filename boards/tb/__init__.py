"""cocotb testbench of the board design (module dir of boards.simulate; imported by the simulator)."""
