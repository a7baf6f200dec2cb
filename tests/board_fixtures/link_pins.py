"""Drive ``boards.link.LinkTop`` over its UART pins in Amaranth's simulator (no cocotb, no HDL)."""
from __future__ import annotations

from amaranth.sim import Simulator


def exchange(top, requests: list[bytes], divisor: int) -> list[bytes]:
    """Send each request frame on ``top.rx`` (8N1, ``divisor`` cycles a bit) and return the reply
    frame read from ``top.tx`` after it (one reply per request, as the device sends them)."""
    replies: list[bytes] = []
    sim = Simulator(top)
    sim.add_clock(1e-6)

    async def bench(ctx):
        async def send(b):
            for bit in [0, *((b >> i) & 1 for i in range(8)), 1]:
                ctx.set(top.rx, bit)
                await ctx.tick().repeat(divisor)

        async def recv():
            await ctx.tick().until(top.tx == 0)
            await ctx.tick().repeat(divisor // 2 + divisor)  # middle of bit 0
            v = 0
            for i in range(8):
                v |= ctx.get(top.tx) << i
                await ctx.tick().repeat(divisor)
            return v

        for req in requests:
            for b in req:
                await send(b)
            head = bytes([await recv() for _ in range(4)])
            n = head[2] | head[3] << 8
            replies.append(head + bytes([await recv() for _ in range(n + 2)]))
            await ctx.tick().repeat(4 * divisor)

    sim.add_testbench(bench)
    sim.run()
    return replies
