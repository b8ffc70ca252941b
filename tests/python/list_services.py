"""Lists a gRPC server's services through reflection, as Python's grpcio-reflection does it
(grpc.reflection.v1alpha, the only version that client asks for), and the methods of each
service whose descriptor it can then fetch and decode.

    python3 list_services.py HOST:PORT [--ca CA --cert CERT --key KEY --server-name NAME]

Prints `service NAME` per listed service, then `methods NAME: M1,M2,...` for those whose
name starts with --describe (default `chaoscontrol.`). Exits 1 on any gRPC error.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def channel(args):
    if args.ca is None:
        return grpc.insecure_channel(args.target)
    with open(args.ca, "rb") as ca, open(args.cert, "rb") as cert, open(args.key, "rb") as key:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read(), private_key=key.read(), certificate_chain=cert.read()
        )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--server-name")
    parser.add_argument("--describe", default="chaoscontrol.")
    args = parser.parse_args()
    with channel(args) as chan:
        # The channel connects lazily: fail within 20 s rather than hang on an absent server.
        grpc.channel_ready_future(chan).result(timeout=20)
        database = ProtoReflectionDescriptorDatabase(chan)
        try:
            services = database.get_services()
            for name in services:
                print(f"service {name}")
            pool = DescriptorPool(database)
            for name in services:
                if name.startswith(args.describe):
                    service = pool.FindServiceByName(name)
                    methods = ",".join(m.name for m in service.methods)
                    print(f"methods {name}: {methods}")
        except grpc.RpcError as error:
            print(f"reflection failed: {error.code()}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
