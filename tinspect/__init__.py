"""tinspect: a transparent inspection proxy on Twisted."""
