"""HTTP/2: header blocks, the h2 connection, the layer, its upstream."""
