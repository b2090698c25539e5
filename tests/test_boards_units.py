"""Gateware units of the board link in the Amaranth simulator (no Verilator):
the UART pair, the bridge's CRC tree, and the bridge's stall watchdog against
an engine stub that never takes an event."""

import random

import pytest

from amaranth import *
from amaranth.sim import Simulator

from spikeforge.boards import protocol as P
from spikeforge.boards.bridge import HostBridge
from spikeforge.boards.uart import UARTRx, UARTTx
from spikeforge.hw.network import engine_geometry
from spikeforge.hw.randnet import random_network

DIV = 4


async def send_bytes(ctx, pin, data, div=DIV):
    for b in data:
        for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
            ctx.set(pin, bit)
            await ctx.tick().repeat(div)


async def recv_byte(ctx, pin, div=DIV, limit=100_000):
    n = 0
    while ctx.get(pin):
        await ctx.tick()
        n += 1
        assert n < limit, "no start bit"
    await ctx.tick().repeat(div // 2)
    b = 0
    for i in range(8):
        await ctx.tick().repeat(div)
        b |= ctx.get(pin) << i
    await ctx.tick().repeat(div)
    assert ctx.get(pin) == 1, "stop bit"
    return b


def test_gateware_crc_equals_the_host_crc():
    """The bridge's amaranth.lib.crc unit (P.CRC_ALGORITHM) and the host's
    binascii.crc_hqx agree, byte by byte, over random frames."""
    from amaranth.lib.crc import Processor
    rng = random.Random(1)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(20)]
    for data in frames:
        assert P.CRC_ALGORITHM(data_width=8).compute(data) == P.crc16(data)
    dut = Processor(P.CRC_ALGORITHM(data_width=8))
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    checked = []

    async def tb(ctx):
        for data in frames:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for i, b in enumerate(data):
                ctx.set(dut.data, b)
                ctx.set(dut.valid, 1)
                await ctx.tick()
                assert ctx.get(dut.crc) == P.crc16(data[:i + 1])
            ctx.set(dut.valid, 0)
            checked.append(ctx.get(dut.crc))

    sim.add_testbench(tb)
    sim.run()
    assert checked == [P.crc16(d) for d in frames] and len(set(checked)) > 1


def test_uart_loopback():
    m = Module()
    m.submodules.tx = tx = UARTTx(DIV)
    m.submodules.rx = rx = UARTRx(DIV)
    m.d.comb += rx.rx.eq(tx.tx)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    data = bytes([0x00, 0xFF, 0xA5, 0x5A, 0x01, 0x80])
    got = []

    async def sender(ctx):
        for b in data:
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)

    async def receiver(ctx):
        while len(got) < len(data):
            await ctx.tick()
            if ctx.get(rx.valid):
                assert not ctx.get(rx.frame_error)
                got.append(ctx.get(rx.data))

    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.run_until(1e-6 * 12 * DIV * (len(data) + 2))
    assert bytes(got) == data


def test_bridge_stall_watchdog_and_ping():
    net = random_network(3)
    engine = engine_geometry(net, 2)  # widths only: the testbench plays the engine
    bridge = HostBridge(engine, divisor=DIV, clock_hz=1_000_000, timeout_cycles=400,
                        stall_cycles=50, design_id=0xCAFE)
    sim = Simulator(bridge)
    sim.add_clock(1e-6)
    replies = []

    async def tb(ctx):
        ctx.set(bridge.rx, 1)
        ctx.set(bridge.mem_write.ready, 1)
        ctx.set(bridge.events.ready, 0)  # an engine that never takes an event
        await ctx.tick().repeat(5)
        for frame in (P.encode(P.Cmd.PING, 1),
                      P.encode(P.Cmd.EVENTS, 2, bytes(2 * bridge.layout.event_bytes))):
            await send_bytes(ctx, bridge.rx, frame)
            head = bytes([await recv_byte(ctx, bridge.tx) for _ in range(5)])
            n = head[3] | head[4] << 8
            rest = bytes([await recv_byte(ctx, bridge.tx) for _ in range(n + 2)])
            replies.append(P.decode(head + rest))

    sim.add_testbench(tb)
    sim.run()
    ping, stall = replies
    info = P.BoardInfo.unpack(ping.payload)
    assert ping.cmd == P.Cmd.PING | P.REPLY and ping.seq == 1
    assert info.design_id == 0xCAFE and info.timeout_cycles == 400 and info.clock_hz == 1_000_000
    e = P.parse_error(stall)
    assert (e.code, e.cmd, e.detail, e.seq) == (P.ErrorCode.STALL, P.Cmd.EVENTS, 0, 2)


@pytest.mark.parametrize("f_in,f_out", [(25e6, 40e6), (25e6, 100e6), (25e6, 47.3e6),
                                        (12e6, 48e6), (25e6, 133.33e6)])
def test_ecp5_pll_dividers_meet_the_limits(f_in, f_out):
    from spikeforge.boards.pll import ecp5_pll
    p = ecp5_pll(int(f_in), f_out)
    assert 0.99 * f_out <= p.f_out_hz <= f_out
    assert p.f_out_hz == f_in * p.clkfb_div / p.clki_div
    assert f_in / p.clki_div >= 3.125e6 and 400e6 <= p.f_vco_hz <= 800e6
    assert all(1 <= d <= 128 for d in (p.clki_div, p.clkfb_div, p.clkop_div))


def test_ecp5_pll_refuses_what_it_cannot_make():
    from spikeforge.boards.pll import PLLError, ecp5_pll
    with pytest.raises(PLLError, match="outside 3.125..400 MHz"):
        ecp5_pll(25_000_000, 500e6)
    with pytest.raises(PLLError, match="outside 8..400 MHz"):
        ecp5_pll(1_000_000, 40e6)


@pytest.mark.parametrize("f_out", [16e6, 30e6, 36e6, 48e6, 96e6, 100e6, 264e6])
def test_ice40_pll_dividers_meet_the_limits(f_out):
    from spikeforge.boards.pll import ice40_pll
    p = ice40_pll(12_000_000, f_out)
    assert 0.99 * f_out <= p.f_out_hz <= f_out
    assert p.f_out_hz == 12e6 * (p.divf + 1) / ((p.divr + 1) * 2 ** p.divq)
    assert 10e6 <= p.f_pfd_hz <= 133e6 and 533e6 <= p.f_vco_hz <= 1066e6
    assert 0 <= p.divr <= 15 and 0 <= p.divf <= 127 and 1 <= p.divq <= 6


@pytest.mark.parametrize("f_in,divr,filter_range", [(12e6, 0, 1), (48e6, 2, 1), (48e6, 1, 2),
                                                    (96e6, 2, 3), (48e6, 0, 4), (100e6, 0, 5),
                                                    (120e6, 0, 6)])
def test_ice40_pll_filter_range_follows_the_phase_detector(f_in, divr, filter_range):
    # icepll's table: F_PFD 12 -> 1, 16 -> 1, 24 -> 2, 32 -> 3, 48 -> 4, 100 -> 5, 120 -> 6
    from spikeforge.boards.pll import ICE40PLLParams
    assert ICE40PLLParams(int(f_in), divr, 0, 1).filter_range == filter_range


def test_ice40_pll_refuses_what_it_cannot_make():
    from spikeforge.boards.pll import PLLError, ice40_pll
    with pytest.raises(PLLError, match="outside 16..275 MHz"):
        ice40_pll(12_000_000, 300e6)
    with pytest.raises(PLLError, match="outside 10..133 MHz"):
        ice40_pll(5_000_000, 40e6)
