"""Peers of the benchmarks: programs run by another project's own venv (never the product's), fed the same
audio and judged by the same rules as the appliance (`appliance bench voice --peer pipecat`)."""
