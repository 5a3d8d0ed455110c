"""The gRPC scenario: OIP ModelInfer on the decoder through Triton's generated stubs, closed loop.

wrk speaks HTTP/1.1 only, so this load generator is grpc.aio: ``connections`` callers, each sending
the same prebuilt request (raw tensor contents) as soon as its last answer arrived, spread over a
few channels (HTTP/2 connections). It runs in this process on the same cores as the server, so its
own cost is in the figures; compare gRPC with gRPC.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

CALLERS_PER_CHANNEL = 16
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(rows: int, latent_dim: int):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="fashion-mnist-decoder")
    request.inputs.add(name="z", datatype="FP32", shape=[rows, latent_dim])
    request.outputs.add(name="image")
    z = np.random.default_rng(1).standard_normal((rows, latent_dim), dtype=np.float32)
    request.raw_input_contents.append(z.tobytes())
    return request


async def _load(target: str, request, connections: int, duration_s: float) -> dict:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, connections // CALLERS_PER_CHANNEL))]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s

    async def caller(stub):
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            try:
                await stub.ModelInfer(request, timeout=60)
                latencies.append(time.perf_counter() - sent)
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(connections)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    p50, p99 = (float(np.percentile(latencies, q)) * 1e6 for q in (50, 99)) if latencies else (0.0, 0.0)
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_us": p50, "p99_us": p99, "errors": errors}


def grpc_load(target: str, rows: int, latent_dim: int, connections: int, duration_s: float) -> dict:
    """One closed-loop run against ``target`` (host:port): requests, errors and latency (µs)."""
    return asyncio.run(_load(target, infer_request(rows, latent_dim), connections, duration_s))


def grpc_ready(target: str, latent_dim: int = 32) -> bool:
    """Whether ``target`` (host:port) answers a one-row ModelInfer with an image."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request(1, latent_dim), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(answer.raw_output_contents)
