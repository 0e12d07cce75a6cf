"""The command line: the ``tinspect`` command, the config file, finding taps.

``tinspect.cli.main`` (the console script of tinspect 0.1) is
`tinspect.cli.command.main`, imported only when asked for, so the proxy does
not load the command's helpers when it reads its config.
"""

__all__ = ["COMMANDS", "build_parser", "main"]


def __getattr__(name):
    if name in __all__:
        from tinspect.cli import command

        return getattr(command, name)
    raise AttributeError(f"module 'tinspect.cli' has no attribute {name!r}")
