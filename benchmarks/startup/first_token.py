"""Wall time to the first stdout byte of `specdec generate` and to exit."""
import os, subprocess, sys, time
cmd = ["specdec", "generate", "def quicksort(arr):", "--max-new-tokens", "32"] + sys.argv[1:]
for run in range(3):
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(1); first = time.perf_counter() - start
    p.stdout.read(); p.wait(); total = time.perf_counter() - start
    print(f"run {run}: first byte {first:.2f} s, wall {total:.2f} s", flush=True)
