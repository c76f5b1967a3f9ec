"""Running models: runners over a static KV cache or transformers' own, batch rows, linear
kernels, attention. Getting them (registry, fetch, load) is `specdec.models`."""
