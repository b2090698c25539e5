"""Make the pip-installed toolchain visible to Amaranth and cocotb in every test."""

from spikeforge import toolchain

toolchain.setup()
