"""How soon long work stops once its caller's deadline passes, and how soon SIGTERM ends the server.

    python bench/deadline.py --json
    → {"rome_cpu_idle_after_deadline_s", "rome_exit_after_sigterm_s"}

A ``scalpel serve`` process gets a ComputeRome call that would run for many minutes (10,000
optimisation steps over 100 prefixes) with a short client deadline. From the moment the client
sees DEADLINE_EXCEEDED, the server process's CPU time (``/proc/PID/stat``) is sampled every
50 ms; the figure is the time until a 200 ms window where it used under 5 % of one core. Then a
second such call is started and the server gets SIGTERM; the second figure is the time until the
process has exited (the server drains in-flight calls for up to 5 s, then cancels them).
Issue 12's bar: CPU idle within 1 s of the deadline.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process_cpu import cpu_seconds  # noqa: E402
from bench.serve_process import serve_process  # noqa: E402
from service.api.scalpel.v1 import scalpel_pb2 as pb  # noqa: E402
from service.client import ScalpelClient  # noqa: E402

RUNAWAY = pb.ComputeRomeRequest(
    parent="models/toy",
    prompt="The capital of {} is",
    subject="Riia",
    target="Muford",
    hparams_json=json.dumps({"steps": 10_000, "n_prefixes": 100, "early_stop_nll": 0}),
)
WINDOW_S = 0.2
IDLE_SHARE = 0.05


def seconds_until_idle(pid: int, since: float, give_up_s: float = 60.0) -> float:
    """Seconds from ``since`` to the start of the first ``WINDOW_S`` window under ``IDLE_SHARE``."""
    while time.perf_counter() - since < give_up_s:
        start, used = time.perf_counter(), cpu_seconds(pid)
        time.sleep(WINDOW_S)
        if (cpu_seconds(pid) - used) / (time.perf_counter() - start) < IDLE_SHARE:
            return start - since
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=3.0, help="the client's deadline in seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_process(Path(tmp)) as served,
        ScalpelClient(f"127.0.0.1:{served.port}", served.secret) as client,
    ):
        server = served.process
        try:
            client.edits.ComputeRome(RUNAWAY, timeout=args.deadline)
            raise SystemExit("the runaway ComputeRome finished before its deadline: raise --deadline")
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        results["rome_cpu_idle_after_deadline_s"] = seconds_until_idle(server.pid, time.perf_counter())
        client.edits.ComputeRome.future(RUNAWAY)
        time.sleep(args.deadline)  # well into the optimisation
        sent = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        results["rome_exit_after_sigterm_s"] = time.perf_counter() - sent
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:<34} {value:.3f}")


if __name__ == "__main__":
    main()
