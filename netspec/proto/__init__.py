"""The Caffe schema, compiled from ``protos/caffe.proto`` (see ``tools/gen_proto.sh``)."""
