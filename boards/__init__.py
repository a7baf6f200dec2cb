"""boards: the LSTM core on FPGA boards with a UART host link (see boards/README.md).

protocol (framing, CRC, payloads; shared by gateware and host), uart (8N1 UART), link (UART +
framing + command executor + core: the board design without pins), top (board specs, clocks,
resets, pins through amaranth-boards), build (fit check, YoWASP/Vivado build, report), host
(transports and the driver), simulate + tb/ (board-level cocotb simulation), __main__ (CLI).
"""
