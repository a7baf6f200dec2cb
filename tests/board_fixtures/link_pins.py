"""Drive ``boards.link.LinkTop`` over its UART pins in Amaranth's simulator (no cocotb, no HDL)."""
from __future__ import annotations

from amaranth.sim import Simulator

from boards import protocol as P


def exchange(top, requests: list[bytes], divisor: int) -> list[bytes]:
    """Send each request frame on ``top.rx`` (8N1, ``divisor`` cycles a bit) and return the reply
    frame read from ``top.tx`` after it (one reply per request, as the device sends them).
    AssertionError when a reply does not come (the simulation is bounded, it never hangs)."""
    replies: list[bytes] = []
    wait_limit = top.timeout_cycles + 100_000  # the device's frame timeout plus a long step
    sim = Simulator(top)
    sim.add_clock(1e-6)

    async def bench(ctx):
        async def send(b):
            for bit in [0, *((b >> i) & 1 for i in range(8)), 1]:
                ctx.set(top.rx, bit)
                await ctx.tick().repeat(divisor)

        async def recv():
            for _ in range(wait_limit):  # bounded: a missing reply fails instead of hanging
                await ctx.tick()
                if not ctx.get(top.tx):
                    break
            else:
                raise AssertionError(f"no reply byte within {wait_limit} cycles after request {len(replies)}")
            await ctx.tick().repeat(divisor // 2 + divisor)  # middle of bit 0
            v = 0
            for i in range(8):
                v |= ctx.get(top.tx) << i
                await ctx.tick().repeat(divisor)
            return v

        for req in requests:
            for b in req:
                await send(b)
            head = bytes([await recv() for _ in range(P.HEADER_BYTES)])
            n = int.from_bytes(head[P.LEN_OFFSET:P.LEN_OFFSET + 2], "little")
            replies.append(head + bytes([await recv() for _ in range(n + P.CRC_BYTES)]))
            await ctx.tick().repeat(4 * divisor)

    sim.add_testbench(bench)
    sim.run()
    return replies
