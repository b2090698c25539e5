"""The one base class of every error spikeforge reports to a user.

The command line turns these into ``error: <message>`` and exit status 2;
anything else is a bug and keeps its traceback.
"""


class SpikeforgeError(Exception):
    """Bad input, named precisely: what is wrong and where."""


def shown(name: str) -> str:
    """A name from the user's file as a message shows it: as is when
    printable, else quoted with its escapes (a line break in a JSON key must
    not split the one-line ``error: ...``)."""
    return name if name.isprintable() else repr(name)
