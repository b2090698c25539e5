"""Make the pip-installed toolchain visible to Amaranth and cocotb in every test."""

from spikeforge import toolchain

toolchain.setup()


def quantized_run(tmp_path_factory, name: str, train_args: list[str]):
    """A run folder trained with ``train_args`` (tiny: seconds) and quantized
    with 4-bit inputs, for tests of the later steps."""
    from spikeforge import cli
    r = tmp_path_factory.mktemp(name)
    assert cli.main(["train", "-q", *train_args, "--out", str(r)]) == 0
    assert cli.main(["quantize", "-q", str(r), "--input-bits", "4"]) == 0
    return r
