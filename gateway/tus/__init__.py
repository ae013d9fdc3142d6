"""The tus 1.0 wire rules: header parsing, no I/O."""
