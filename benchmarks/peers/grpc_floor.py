"""Peer: the gRPC floor. A grpc.aio server whose ``ModelInfer`` answers every call with a constant
decoded image (one row, raw contents): no model, no batching, no rules, in N processes sharing the
port (SO_REUSEPORT), as vae-serve's workers do. What grpcio itself costs a call here is the ceiling
any grpc.aio service of N processes can reach.
Usage: ``python -m benchmarks.peers.grpc_floor PORT WORKERS``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

IMAGE = np.zeros((1, 784), np.float32).tobytes()


class Floor(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):
        output = service_pb2.ModelInferResponse.InferOutputTensor(name="image", datatype="FP32", shape=[1, 784])
        return service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", outputs=[output], raw_output_contents=[IMAGE]
        )


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def run(port: int) -> None:
    asyncio.run(serve(port))


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    processes = [multiprocessing.Process(target=run, args=(port,)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
