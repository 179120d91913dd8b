"""An OPC UA server this project did not write (python `asyncua`), for interoperability tests.

Picks a free port on 127.0.0.1, prints `listening opcua opc.tcp://127.0.0.1:PORT/freeopcua/server/`
once it serves, and runs until stdin closes (so it never outlives the test that started it).

Address space (namespace urn:flowsquare:asyncua-test, string NodeIds, under Objects/Tank201):
  Tank201.Level   Double   1000 + tick (changes every 100 ms)
  Tank201.Count   Int32    tick
  Tank201.Name    String   "TK-201"
  Tank201.Valve   Boolean  tick is odd
  Tank201.Broken  Double   status BadSensorFailure, no value
"""

import asyncio
import logging
import socket
import sys

from asyncua import Server, ua

logging.disable(logging.WARNING)
NS = "urn:flowsquare:asyncua-test"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def stdin_closed():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main():
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/freeopcua/server/"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    server.set_server_name("asyncua interop server")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NS)
    tank = await server.nodes.objects.add_object(ua.NodeId("Tank201", idx), "Tank201")
    level = await tank.add_variable(ua.NodeId("Tank201.Level", idx), "Level", 1000.0)
    count = await tank.add_variable(
        ua.NodeId("Tank201.Count", idx), "Count", 0, varianttype=ua.VariantType.Int32
    )
    await tank.add_variable(ua.NodeId("Tank201.Name", idx), "Name", "TK-201")
    valve = await tank.add_variable(ua.NodeId("Tank201.Valve", idx), "Valve", False)
    broken = await tank.add_variable(ua.NodeId("Tank201.Broken", idx), "Broken", 0.0)
    await broken.write_value(
        ua.DataValue(
            StatusCode_=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
        )
    )
    async with server:
        print(f"listening opcua {url}", flush=True)
        closed = asyncio.ensure_future(stdin_closed())
        tick = 0
        while not closed.done():
            await asyncio.sleep(0.1)
            tick += 1
            await level.write_value(1000.0 + tick)
            await count.write_value(ua.Variant(tick, ua.VariantType.Int32))
            await valve.write_value(tick % 2 == 1)


if __name__ == "__main__":
    asyncio.run(main())
