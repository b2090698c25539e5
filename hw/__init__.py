"""The Amaranth engine: event-driven layer cores joined by spike-event streams.

Modules: :mod:`.streams` (event format, FIFO), :mod:`.arith` (multiplier-free
helpers), :mod:`.params` (per-core parameters from an IntLayer),
:mod:`.synapse`, :mod:`.neuron`, :mod:`.layer` (the core), :mod:`.network`
(:class:`NetworkTop`, :func:`input_events`, :func:`first_mismatch`),
:mod:`.fit` (:func:`check_fit`), :mod:`.sim` (Amaranth-simulator runner),
:mod:`.randnet` (random test networks).
"""

from .fit import FitError, check_fit, memory_plan
from .layer import PERF_FIELDS, LayerCore
from .network import Event, Mismatch, NetworkTop, first_mismatch, input_events
from .params import CoreParams, EngineError
from .streams import EventFormat

__all__ = ["NetworkTop", "LayerCore", "CoreParams", "EventFormat", "Event", "Mismatch",
           "input_events", "first_mismatch", "check_fit", "memory_plan", "FitError",
           "EngineError", "PERF_FIELDS"]
