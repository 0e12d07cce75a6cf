"""HTTP/1.1: the sans-IO parser and writer, the layer, its upstream connections."""
