"""The spacegrid command line, thin over the library."""
