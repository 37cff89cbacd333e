"""The dispatcher: a grpc.aio server that runs tools for commanders and stops them."""
