"""`specdec bench`: Spec-Bench workloads, methods compared in one interleaved run, report."""
