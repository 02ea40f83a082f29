"""A Modbus slave for fieldlink's tests (pymodbus 3.11, classic context API).

    modbus_peer.py rtu PATH      # RTU slave on a serial port or pty (any unit id answers)
    modbus_peer.py tcp PORT      # TCP server on 127.0.0.1:PORT

Registers, coils and inputs 0..199 start at 0. The test drives it on stdin, one command per
line, each answered by one line on stdout:

    set hr|ir|co|di ADDR V [V ...]   -> ok              (change values: they reach the wire)
    get hr|ir|co|di ADDR N           -> V V ...
    count                            -> reads=R writes=W fc3=.. fc4=.. (requests received)
    quit

"ready" is printed once the server listens.
"""

import asyncio
import sys
import threading

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

SIZE = 200
TABLES = {"co": 1, "di": 2, "hr": 3, "ir": 4}
READ_CODES = {1, 2, 3, 4}
WRITE_CODES = {5, 6, 15, 16}

counts = {}
lock = threading.Lock()


def trace_pdu(sending, pdu):
    """Counts every request received, by function code."""
    if not sending:
        with lock:
            counts[pdu.function_code] = counts.get(pdu.function_code, 0) + 1
    return pdu


def block():
    # pymodbus data blocks are 1-based: the device context adds 1 to every address.
    return ModbusSequentialDataBlock(1, [0] * SIZE)


def serve_stdin(device):
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "set":
                fc, addr = TABLES[words[1]], int(words[2])
                values = [int(v) for v in words[3:]]
                device.setValues(fc, addr, values)
                print("ok", flush=True)
            elif words[0] == "get":
                fc, addr, n = TABLES[words[1]], int(words[2]), int(words[3])
                values = device.getValues(fc, addr, n)
                print(" ".join(str(int(v)) for v in values), flush=True)
            elif words[0] == "count":
                with lock:
                    reads = sum(n for fc, n in counts.items() if fc in READ_CODES)
                    writes = sum(n for fc, n in counts.items() if fc in WRITE_CODES)
                    detail = " ".join(f"fc{fc}={n}" for fc, n in sorted(counts.items()))
                print(f"reads={reads} writes={writes} {detail}", flush=True)
            elif words[0] == "quit":
                break
            else:
                print("error unknown command", flush=True)
        except Exception as e:  # noqa: BLE001 - the test reads the message
            print(f"error {e}", flush=True)
    import os

    os._exit(0)


async def main():
    mode, where = sys.argv[1], sys.argv[2]
    device = ModbusDeviceContext(di=block(), co=block(), hr=block(), ir=block())
    context = ModbusServerContext(devices=device, single=True)
    if mode == "rtu":
        server = ModbusSerialServer(context, port=where, baudrate=9600, trace_pdu=trace_pdu)
    else:
        server = ModbusTcpServer(context, address=("127.0.0.1", int(where)), trace_pdu=trace_pdu)
    threading.Thread(target=serve_stdin, args=(device,), daemon=True).start()
    # background=True returns once the port is open or the socket listens: only then may the
    # test send requests (bytes sent earlier into the pty may be flushed when the port opens).
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
