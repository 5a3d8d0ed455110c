"""The benchmark harness: wrk against vae-serve and its peers on 127.0.0.1 (``python -m benchmarks``)."""
