#!/usr/bin/env python3
"""Calls a daemon's Version service over its unix socket with gRPC's C core (Python's grpcio),
sending the socket's path as :authority, as grpcio and the C++, Ruby and PHP clients do for a
unix: target (set explicitly here, so the test does not depend on the grpcio version's
default). Prints the version the daemon answered; fails if the call fails.

  grpc-authority.py SOCKET
"""

import sys

import grpc


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    socket = sys.argv[1]
    options = [("grpc.default_authority", socket)]
    with grpc.insecure_channel(f"unix:{socket}", options=options) as channel:
        call = channel.unary_unary(
            "/containerd.services.version.v1.Version/Version",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        answer = call(b"", timeout=10)
    # VersionResponse field 1 (version): tag 0x0a, a one-byte length, the string.
    if len(answer) < 2 or answer[0] != 0x0A:
        sys.exit(f"unexpected answer {answer!r}")
    print(answer[2 : 2 + answer[1]].decode())


if __name__ == "__main__":
    main()
