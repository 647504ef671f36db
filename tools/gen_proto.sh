#!/bin/sh
# Regenerate netspec/proto/caffe_pb2.py from protos/caffe.proto.
#
# Needs grpcio-tools (a development-only dependency; it bundles protoc):
#     pip install grpcio-tools
# Run from anywhere:  sh tools/gen_proto.sh
# The generated module checks the protobuf runtime version at import time;
# the runtime must be at least the protobuf version protoc was built for
# (see the "Protobuf Python Version" line at the top of caffe_pb2.py).
set -eu
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -Iprotos --python_out=netspec/proto protos/caffe.proto
echo "wrote netspec/proto/caffe_pb2.py"
