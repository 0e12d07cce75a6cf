"""Built-in taps, found by name (``--taps logger,mangler``).

`BUILTIN` maps each name to its ``module:Class``; `tinspect.taplib.loader` looks
names up here first, then in the ``tinspect.taps`` entry-point group that
installed packages may add to.
"""

__all__ = ["BUILTIN"]

BUILTIN: dict[str, str] = {
    "logger": "taps.logger:LoggerTap",
    "mangler": "taps.mangler:ManglerTap",
    "headers": "taps.headers:HeadersTap",
    "faults": "taps.faults:FaultsTap",
    "filter": "taps.filter:FilterTap",
    "recorder": "taps.recorder:RecorderTap",
    "cache": "taps.cache:CacheTap",
}
