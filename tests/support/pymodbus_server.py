"""A Modbus TCP server this project did not write (pymodbus), for interoperability tests.

Binds 127.0.0.1 port 0, prints `listening tcp 127.0.0.1:PORT` once it accepts connections, and
serves until stdin closes (so it never outlives the test that started it).

Register map (protocol addresses, unit 1):
  holding 0-1  f32 12.5, ABCD          holding 2  u16 4242
  holding 3    i16 -5                  holding 4-5  u32 123456789, CDAB (low word first)
  holding 6-9  string "TK-101" (8 bytes)
  input   0    u16 215 (21.5 degC x10)  coils 0..3  1,0,1,1
  anything at or past holding 10 answers exception 2 (illegal data address)
"""

import asyncio
import logging
import struct
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

logging.disable(logging.WARNING)


def words_f32_abcd(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def words_u32_cdab(v):
    hi, lo = struct.unpack(">HH", struct.pack(">I", v))
    return [lo, hi]


def main():
    holding = (
        words_f32_abcd(12.5)
        + [4242, (-5) & 0xFFFF]
        + words_u32_cdab(123456789)
        + list(struct.unpack(">HHHH", b"TK-101\x00\x00"))
    )
    # pymodbus sequential blocks are addressed from 1 for protocol address 0.
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, [215]),
        co=ModbusSequentialDataBlock(1, [True, False, True, True]),
        di=ModbusSequentialDataBlock(1, [False] * 4),
    )
    context = ModbusServerContext(devices={1: device})

    async def run():
        server = ModbusTcpServer(context, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        port = server.transport.sockets[0].getsockname()[1]
        print(f"listening tcp 127.0.0.1:{port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.shutdown()

    asyncio.run(run())


if __name__ == "__main__":
    main()
