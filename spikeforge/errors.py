"""The one base class of every error spikeforge reports to a user.

The command line turns these into ``error: <message>`` and exit status 2;
anything else is a bug and keeps its traceback.
"""


class SpikeforgeError(Exception):
    """Bad input, named precisely: what is wrong and where."""
