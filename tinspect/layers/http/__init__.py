"""HTTP: the explicit proxy's rules, HTTP/1.1 and HTTP/2."""
