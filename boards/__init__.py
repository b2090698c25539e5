"""Boards: bitstreams for the ULX3S (ECP5-85F) and the iCEBreaker (iCE40UP5K),
the UART host link, and resource / timing reports.

    protocol.py    framed, CRC-checked host protocol (both sides' rules)
    uart.py        8N1 UART receiver / transmitter (Amaranth)
    bridge.py      HostBridge: frames <-> the engine's ports (Amaranth)
    top.py         BoardTop: engine + bridge + status LEDs (pins only)
    ulx3s.py       ULX3S pins, icebreaker.py: iCEBreaker pins
    build.py       build(), build_run(): bitstream + report.json; which
                   models fit which board; default networks per board
    host.py        Board: the host driver over a serial port or the simulated
                   UART (cocotb); infer_run() for `spikeforge infer`
"""
