import time, torch, sys
torch.set_num_threads(int(sys.argv[1]))
ws = [torch.randn(4864, 896, dtype=torch.bfloat16) * 0.02 for _ in range(24)]  # stream from DRAM
wd = [torch.randn(896, 4864, dtype=torch.bfloat16) * 0.02 for _ in range(24)]
with torch.inference_mode():
    for rows in (1, 2, 4, 6, 8, 16):
        x = torch.randn(rows, 896, dtype=torch.bfloat16); y = torch.randn(rows, 4864, dtype=torch.bfloat16)
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            for a, b in zip(ws, wd):
                torch.nn.functional.linear(x, a); torch.nn.functional.linear(y, b)
            best = min(best, time.perf_counter() - t)
        xf = x.float(); yf = y.float()
        print(f"rows {rows:2d}: bf16 24x(up+down) {best*1e3:.1f} ms", flush=True)
