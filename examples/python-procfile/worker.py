"""lbsolo's Procfile example, worker process: a background loop that logs a tick now and then."""

import os
import signal
import time

RELEASE = os.environ.get("LBSOLO_RELEASE", "dev")
INTERVAL = float(os.environ.get("WORKER_INTERVAL", "10"))


def main() -> None:
    # Stop at the end of a tick when lbsolo stops the container (SIGTERM).
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print(f"python-procfile worker {RELEASE} started", flush=True)
    tick = 0
    while not stopping:
        tick += 1
        print(f"worker tick {tick}", flush=True)
        time.sleep(INTERVAL)
    print("worker stopped", flush=True)


if __name__ == "__main__":
    main()
