"""Fixtures the tests and the benchmarks share: toy problems with known answers, the ComfyUI test host
harness and its tiny native models. Nothing at run time imports it."""
