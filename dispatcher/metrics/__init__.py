"""The dispatcher's metrics: plain counters the runtime keeps (`stats`), the gRPC server metrics
(`grpc_server`) and their Prometheus exposition (`exporter`)."""
