"""An evenly paced MQTT QoS 1 publisher that measures PUBACK latency (for scripts/bench-wear).

    wear-pub.py HOST PORT RATE SECONDS [INFLIGHT]

Publishes 64-byte payloads on site/meter at RATE messages a second for SECONDS, then waits for
the last PUBACKs and prints one line: `sent N acked N p50_ms X p99_ms Y max_ms Z`.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> None:
    host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    sent_at: dict[int, float] = {}
    # PUBACKs that arrived before publish() returned the message id.
    early: dict[int, float] = {}
    latencies: list[float] = []
    # Never held while calling into paho: paho calls on_publish holding its own locks, and a
    # publish() waiting for those while we hold ours would deadlock.
    lock = threading.Lock()

    def on_publish(_client, _userdata, mid, *_rest) -> None:
        now = time.monotonic()
        with lock:
            start = sent_at.pop(mid, None)
            if start is None:
                early[mid] = now
            else:
                latencies.append(now - start)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wear-pub")
    client.max_inflight_messages_set(int(sys.argv[5]) if len(sys.argv) > 5 else 100)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    payload = b"0" * 64
    total = int(rate * seconds)
    start = time.monotonic()
    for n in range(total):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic()
        info = client.publish("site/meter", payload, qos=1)
        with lock:
            acked = early.pop(info.mid, None)
            if acked is None:
                sent_at[info.mid] = sent
            else:
                latencies.append(acked - sent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(latencies) >= total:
                break
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    with lock:
        ms = sorted(x * 1000 for x in latencies)
    if not ms:
        print(f"sent {total} acked 0")
        return

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    print(
        f"sent {total} acked {len(ms)} p50_ms {pct(0.50):.1f} p99_ms {pct(0.99):.1f} "
        f"max_ms {ms[-1]:.1f}"
    )


if __name__ == "__main__":
    main()
