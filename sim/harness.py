"""A Verilog harness around the exported :class:`~spikeforge.hw.network.NetworkTop`.

The harness lets Verilator run free: inputs are loaded in bulk from a
``$readmemh`` file and every layer's output events are written to a trace
file by ``$fwrite`` in the simulator, so Python touches nothing per cycle.

``events.hex``: one word per line, ``{op[1:0], payload}`` (payload = the
input port's event layout):

===  =======================================================================
op   meaning
===  =======================================================================
0    an input beat (event or end-of-step marker) for the DUT's ``events``
1    begin an image: pulse ``start``, wait for the clear pass, then feed
     (``stream``: only for the first image; later images follow at once)
2    end of the stream: wait for the outstanding results, flush the trace
     and raise ``finished``
===  =======================================================================

The clock and reset are generated inside the harness (built with
``--timing``), so the simulator advances without a callback per edge.
Without ``stream``, after the last beat of an image the harness waits for
``done`` and writes the image's result before the next image's ``start``;
with ``stream`` (LIF / IF networks) images are fed back to back and a result
is written whenever the DUT's ``result_valid`` strobes (input order).  With
``pause`` on, an LFSR withholds ``valid`` on about one cycle in four (the DUT
must cope with gaps).

A network with an fc layer's weights in the SDRAM (``NetworkTop(sdram=...)``)
gets a model of the chip beside it (:func:`sdram_chip`), its words from
``sdram.hex`` (:func:`spikeforge.hw.weightstream.sdram_image`); it checks
what a chip's function needs (rows opened before use, ``tRCD``, the mode's
CAS latency, refreshes with every bank closed) and writes ``E code clock``
to the trace on the first breach; the full datasheet timing is
:class:`~spikeforge.hw.sdram.SdramModel`'s, in the Amaranth tests.

``trace.txt``: ``B img clock`` when the harness begins feeding an image;
``S img layer payload_hex`` for every beat leaving a layer (spikes and
end-of-step markers, in order); ``D img prediction cycles counts_hex
perf_hex clock`` when an image is done (``clock``: the harness's free-running
cycle count, so latencies and the interval between completions are measured;
``perf``: the counters since the last ``start``).
"""

from __future__ import annotations

HARNESS_TOP = "sf_harness"
DUT_TOP = "sf_engine"
OP_BEAT, OP_IMAGE, OP_END = 0, 1, 2
#: the SDRAM model's words, in the run folder (one hex word a line)
SDRAM_HEX = "sdram.hex"
#: what the SDRAM model's ``E`` lines' codes mean
SDRAM_ERRORS = {1: "ACTIVE on an open bank", 2: "READ or WRITE on a closed bank",
                3: "READ or WRITE before tRCD", 4: "READ or WRITE before LOAD MODE REGISTER",
                5: "an address past the modelled words", 6: "AUTO REFRESH with a bank open",
                7: "LOAD MODE REGISTER with a CAS latency but 2 or 3", 8: "a masked write"}


def sdram_depth(top) -> int:
    """Words the SDRAM model holds: the streamed layer's, to a power of two."""
    from spikeforge.hw.sdram import ULX3S_SDRAM
    from spikeforge.hw.weightstream import sdram_words
    n = top.sdram[0]
    used = top.params[n].weight_depth * sdram_words(top.params[n], ULX3S_SDRAM)
    return 1 << max(4, (used - 1).bit_length())


def sdram_chip(top, preload: bool = True,
               on_error: str = '$fwrite(fd, "E %0d %0d\\n", sd_code, clock_count);'
               ) -> tuple[str, str]:
    """The SDRAM model (Verilog in the harness) for ``top``'s streamed layer
    (a :class:`~spikeforge.hw.network.NetworkTop`), and the DUT's pin
    connections to it.  ``preload``: its words from :data:`SDRAM_HEX` (else
    zero: a host writes them); ``on_error``: the Verilog statement run on the
    first breach (``sd_code``: :data:`SDRAM_ERRORS`)."""
    from spikeforge.hw.sdram import ULX3S_SDRAM as g
    from spikeforge.hw.sdram import SdramTiming
    rcd = SdramTiming().cycles(top.sdram_hz)["rcd"]   # the datasheet's, not the controller's
    depth = sdram_depth(top)
    aw = g.bank_bits + g.row_bits + g.col_bits
    nb = 1 << g.bank_bits
    W = g.width
    pins = ("cke", "cmd", "ba", "a", "dq_o", "dq_oe", "dqm", "dq_i")
    conn = ", ".join(f".sdram_pins__{p}(sd_{p})" for p in pins)
    text = f"""
  // the SDRAM chip, functional (sim/harness.py: sdram_chip): tRCD {rcd} cycles, the CAS
  // latency the mode register sets (2 or 3)
  wire sd_cke, sd_dq_oe;
  wire [3:0] sd_cmd;
  wire [{g.bank_bits - 1}:0] sd_ba;
  wire [{max(g.row_bits, 11) - 1}:0] sd_a;
  wire [{W - 1}:0] sd_dq_o;
  wire [{W // 8 - 1}:0] sd_dqm;
  reg [{W - 1}:0] sd_mem [0:{depth - 1}];
  {f'initial $readmemh("{SDRAM_HEX}", sd_mem);' if preload else ""}
  reg [{g.row_bits - 1}:0] sd_row [0:{nb - 1}];
  reg [7:0] sd_since [0:{nb - 1}];
  reg [{nb - 1}:0] sd_open = 0;
  reg sd_moded = 0, sd_bad = 0, sd_cl3 = 0;
  reg [3:0] sd_code;
  reg [{W - 1}:0] sd_p0, sd_p1, sd_p2;
  reg sd_v0 = 0, sd_v1 = 0, sd_v2 = 0;
  // a READ's word, CAS latency cycles after the cycle it is on the pins
  wire [{W - 1}:0] sd_dq_i = sd_cl3 ? (sd_v2 ? sd_p2 : {W}'d0) : (sd_v1 ? sd_p1 : {W}'d0);
  wire [{aw - 1}:0] sd_addr = {{sd_ba, sd_row[sd_ba], sd_a[{g.col_bits - 1}:0]}};
  wire sd_rw = sd_cke && (sd_cmd == 4'b0101 || sd_cmd == 4'b0100);
  integer sd_i;
  always @(posedge clk) begin
    sd_code = 0;
    for (sd_i = 0; sd_i < {nb}; sd_i = sd_i + 1)
      if (sd_since[sd_i] != 8'hff) sd_since[sd_i] <= sd_since[sd_i] + 8'd1;
    sd_v0 <= 0;
    if (sd_cke && sd_cmd == 4'b0011) begin                       // ACTIVE
      if (sd_open[sd_ba]) sd_code = 1;
      sd_open[sd_ba] <= 1; sd_row[sd_ba] <= sd_a[{g.row_bits - 1}:0]; sd_since[sd_ba] <= 8'd1;
    end
    if (sd_rw) begin                                             // READ, WRITE
      if (!sd_open[sd_ba]) sd_code = 2;
      else if (sd_since[sd_ba] < {rcd}) sd_code = 3;
      else if (!sd_moded) sd_code = 4;
      else if (sd_addr >= {depth}) sd_code = 5;
      else if (sd_cmd[0]) begin sd_p0 <= sd_mem[sd_addr]; sd_v0 <= 1; end
      else if (sd_dqm != 0) sd_code = 8;
      else sd_mem[sd_addr] <= sd_dq_o;
    end
    if (sd_cke && sd_cmd == 4'b0010)                             // PRECHARGE
      sd_open <= sd_a[10] ? {nb}'d0 : sd_open & ~({nb}'d1 << sd_ba);
    if (sd_cke && sd_cmd == 4'b0001 && sd_open != 0) sd_code = 6; // AUTO REFRESH
    if (sd_cke && sd_cmd == 4'b0000) begin                       // LOAD MODE REGISTER
      sd_moded <= 1; sd_cl3 <= sd_a[6:4] == 3'd3;
      if (sd_a[6:4] != 3'd2 && sd_a[6:4] != 3'd3) sd_code = 7;
    end
    sd_p1 <= sd_p0; sd_v1 <= sd_v0; sd_p2 <= sd_p1; sd_v2 <= sd_v1;
    if (sd_code != 0 && !sd_bad && !rst) begin
      sd_bad <= 1;
      {on_error}
    end
  end
"""
    return text, conn


def harness_verilog(top, depth: int, pause: bool, stream: bool = False) -> str:
    """Verilog text of the harness for ``top`` (a NetworkTop) with a ROM of
    ``depth`` words; ``stream``: images back to back (module docstring)."""
    pw = len(top.events.payload.as_value())
    layers = len(top.cores)
    mw = len(top.mem_write.payload.as_value())
    ww = pw + 2
    chip, conn = sdram_chip(top) if top.sdram else ("", "")
    conn = f"\n    {conn}," if conn else ""
    taps = "\n".join(
        f"  always @(posedge clk) if (!rst && tap_valid[{n}]) "
        f"$fwrite(fd, \"S %0d {n} %h\\n\", img, tap[{(n + 1) * pw - 1}:{n * pw}]);"
        for n in range(layers))
    return f"""// generated by spikeforge.sim.harness -- do not edit
module {HARNESS_TOP} (output reg finished /*verilator public_flat_rw*/);
  // the clock runs inside the simulator (Verilator --timing): no callback per edge
  reg clk = 1'b0;
  reg rst = 1'b1;
  always #5 clk = ~clk;
  initial #25 rst = 1'b0;
  reg [{ww - 1}:0] rom [0:{depth - 1}];
  integer fd;
  initial begin
    $readmemh("events.hex", rom);
    fd = $fopen("trace.txt", "w");
  end
  reg [31:0] ptr;
  reg [31:0] img;      // results written
  reg [31:0] img_in;   // images begun
  reg first_beat;      // the begun image's first beat is still to be taken
  reg [2:0] state;
  reg start;
  reg [15:0] lfsr;
  reg [63:0] clock_count;
  wire [{ww - 1}:0] word = rom[ptr];
  wire [1:0] op = word[{ww - 1}:{pw}];
  wire gate = {"lfsr[0] | lfsr[5]" if pause else "1'b1"};
  wire ev_valid = (state == 3'd3) && (op == 2'd{OP_BEAT}) && gate;
  wire ev_ready, clearing, done, result_valid;
  wire [{layers - 1}:0] tap_valid;
  wire [{layers * pw - 1}:0] tap;
  wire [{len(top.counts.as_value()) - 1}:0] counts;
  wire [{len(top.scores.as_value()) - 1}:0] scores;
  wire [{len(top.prediction) - 1}:0] prediction;
  wire [31:0] cycles;
  wire [{len(top.perf.as_value()) - 1}:0] perf;
  wire mw_ready;
  wire new_result = {"result_valid" if stream else "done && state == 3'd4"};{chip}
  {DUT_TOP} dut ({conn}
    .clk(clk), .rst(rst), .start(start), .clearing(clearing),
    .events__valid(ev_valid), .events__ready(ev_ready), .events__payload(word[{pw - 1}:0]),
    .mem_write__valid(1'b0), .mem_write__ready(mw_ready), .mem_write__payload({mw}'d0),
    .done(done), .result_valid(result_valid), .counts(counts), .scores(scores),
    .prediction(prediction), .cycles(cycles), .perf(perf), .tap_valid(tap_valid), .tap(tap));
{taps}
  always @(posedge clk) begin
    lfsr <= {{lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]}};
    clock_count <= rst ? 64'd0 : clock_count + 64'd1;
    if (rst) begin
      ptr <= 0; img <= 0; img_in <= 0; first_beat <= 0; state <= 0; start <= 0;
      finished <= 0; lfsr <= 16'hACE1;
    end else begin
      if (new_result) begin
        $fwrite(fd, "D %0d %0d %0d %h %h %0d\\n", img, prediction, cycles, counts, perf,
                clock_count);
        img <= img + 1;
      end
      if (ev_valid && ev_ready && first_beat) begin
        $fwrite(fd, "B %0d %0d\\n", img_in - 1, clock_count);
        first_beat <= 0;
      end
      case (state)
        3'd0: if (op == 2'd{OP_IMAGE}) begin
                ptr <= ptr + 1; img_in <= img_in + 1; first_beat <= 1;
                if ({"img_in == 0" if stream else "1'b1"}) begin start <= 1; state <= 1; end
                else state <= 3;
              end
              else if (op == 2'd{OP_END}) state <= 6;
        3'd1: begin start <= 0; state <= 2; end
        3'd2: if (!clearing) state <= 3;
        3'd3: if (op != 2'd{OP_BEAT}) state <= {"3'd0" if stream else "3'd4"};
              else if (ev_valid && ev_ready) ptr <= ptr + 1;
        3'd4: if (done) state <= 0;
        3'd6: if (img == img_in) begin $fflush(fd); finished <= 1; state <= 5; end
        default: ;
      endcase
    end
  end
endmodule
"""
