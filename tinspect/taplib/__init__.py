"""The toolkit for writing taps: option helpers, filter rules, HAR."""
