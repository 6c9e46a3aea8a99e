#!/usr/bin/env python3
"""TCP forwarder for the bed's node (hack/node.sh): the path from pods to the bed's loopback services.

    hostfwd.py LISTEN_IP:PORT=TARGET_IP:PORT ...

The bed's kube-apiserver, LocalStack and strict EC2 listen on 127.0.0.1 only, and the node has no
kube-proxy. hack/node.sh runs this with, e.g.
    10.96.0.1:443=127.0.0.1:16443     the `kubernetes` Service's ClusterIP, kube-proxy's one job here
    10.88.0.1:4567=127.0.0.1:4567     a bed service on the node's bridge address
so a pod uses the in-cluster config it is given (KUBERNETES_SERVICE_HOST/PORT) unchanged, and its
traffic stays on the bridge and loopback. Bytes are copied as they are (TLS ends at the apiserver).
Standard library only; every listener is bound before it reports "ready", or it exits 1.
"""
import asyncio
import signal
import sys


def parse(spec):
    listen, _, target = spec.partition("=")
    lhost, _, lport = listen.rpartition(":")
    thost, _, tport = target.rpartition(":")
    if not (lhost and lport.isdigit() and thost and tport.isdigit()):
        raise SystemExit(f"hostfwd: bad mapping {spec!r}, want LISTEN_IP:PORT=TARGET_IP:PORT")
    return (lhost, int(lport)), (thost, int(tport))


async def pipe(src, dst, peer):
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()  # half-close: the other direction may still carry an answer
    except (ConnectionError, OSError):
        peer.close()  # a reset on one side ends both
        dst.close()


async def handle(reader, writer, target):
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
    except (OSError, asyncio.TimeoutError) as err:
        print(f"hostfwd: {target[0]}:{target[1]} unreachable: {err}", file=sys.stderr, flush=True)
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer, writer), pipe(up_reader, writer, up_writer))
    writer.close()
    up_writer.close()


async def main(specs):
    servers = []
    for listen, target in map(parse, specs):
        try:
            servers.append(
                await asyncio.start_server(
                    lambda r, w, t=target: handle(r, w, t), listen[0], listen[1], reuse_address=True
                )
            )
        except OSError as err:
            raise SystemExit(f"hostfwd: cannot listen on {listen[0]}:{listen[1]}: {err}")
        print(f"hostfwd: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    print("hostfwd: ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1:]))
