"""The namespace lab (`tinspect.lab.netlab`) and the ``tinspect lab`` command.

``run_lab`` and ``REQUIRED_TOOLS`` (the names of tinspect 0.1's
``tinspect.lab``) are `tinspect.lab.command`'s, imported only when asked for,
so a script that builds a `Lab` does not load the command.
"""

__all__ = ["run_lab", "REQUIRED_TOOLS"]


def __getattr__(name):
    if name in __all__:
        from tinspect.lab import command

        return getattr(command, name)
    raise AttributeError(f"module 'tinspect.lab' has no attribute {name!r}")
