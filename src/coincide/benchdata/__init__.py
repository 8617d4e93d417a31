"""Benchmark videos composed from real recordings and real images (`coincide make-bench`).

A clip shows one dominant class, in sound (real recordings over a real ambient background) and in
pictures (real images over a shared background pool), written as an ordinary mp4 that goes through
the same ingestion as a user's videos. `compose.run` is the entry point; docs/benchmark.md explains
the composition and every parameter.
"""
