"""pymodbus's own client, for the benchmark next to fieldlink's bridge.

    bench_client.py PORT SECONDS

Reads holding registers 0..9 from 127.0.0.1:PORT in a tight loop for SECONDS. Each time
register 0 changes it prints "seen VALUE UNIX_NS"; at the end "polls N SECONDS".
"""

import sys
import time

from pymodbus.client import ModbusTcpClient


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    client = ModbusTcpClient("127.0.0.1", port=port)
    client.connect()
    last = None
    polls = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rr = client.read_holding_registers(0, count=10)
        polls += 1
        if rr.isError():
            continue
        value = rr.registers[0]
        if value != last:
            print(f"seen {value} {time.time_ns()}", flush=True)
            last = value
    print(f"polls {polls} {time.monotonic() - start:.3f}", flush=True)
    client.close()


if __name__ == "__main__":
    main()
